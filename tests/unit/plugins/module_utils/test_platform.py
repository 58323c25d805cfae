"""Delinea Platform sign-in in the shared client.

Against the emulator: the client-credentials grant, vault discovery through the broker, where
the access token may go, renewal on 401 and the failures an operator must be able to act on.
The emulator listens on 127.0.0.1, which is not a .delinea.app host, so these tests turn
platform on explicitly; the auto-detection and the vault host rules are checked on host names
alone, with every request made to fail, so nothing is ever sent to a real tenant.
"""

import pytest
import requests

from ansible_collections.secretserver.backup.plugins.module_utils import client as client_mod
from ansible_collections.secretserver.backup.plugins.module_utils.client import SecretServerClient
from ansible_collections.secretserver.backup.plugins.module_utils.errors import (
    AuthenticationError,
    ProtocolError,
    SecretServerError,
)
from relay import Relay
from support import Sink

CLIENT_ID = 'svc-backup'
CLIENT_SECRET = 'svc-backup-secret'
VAULT_PATH = '/vault1/SecretServer'


def platform_client(emulator, secrets=None, **kwargs):
    args = dict(username=CLIENT_ID, password=CLIENT_SECRET, platform=True)
    args.update(kwargs)
    return SecretServerClient(args.pop('base_url', emulator.root_url),
                              register_secret=(secrets if secrets is not None else []).append,
                              **args)


def vault(name, url, default=True, active=True):
    return {'vaultId': 'id-' + name, 'name': name, 'type': 'SecretServer',
            'isDefault': default, 'isActive': active, 'connection': {'url': url}}


def api_requests(emulator):
    return [r for r in emulator.state()['requests'] if r['route'] in ('list', 'download')]


def newest_downloadable(records):
    return next(r for r in records if r['can_download'])


@pytest.fixture
def no_requests(monkeypatch):
    """Make any HTTP request fail the test: host-name checks must stay offline."""
    def refuse(self, method, url, *args, **kwargs):
        raise AssertionError('a request was sent to %s' % url)
    monkeypatch.setattr(requests.Session, 'request', refuse)


# ---- sign-in and discovery -------------------------------------------------------------------

def test_platform_sign_in_lists_and_downloads_through_the_discovered_vault(emulator):
    secrets = []
    sent = []
    client = platform_client(emulator, secrets=secrets)
    original = client.session.request

    def recording(method, url, **kwargs):
        sent.append((method, url, kwargs.get('data'), kwargs.get('headers') or {}))
        return original(method, url, **kwargs)
    client.session.request = recording

    records = client.list_exports()
    record = newest_downloadable(records)
    sink = Sink()
    client.download(record['id'], sink)

    assert bytes(sink.data) == emulator.archive_bytes(record['id'])
    # The grant: a client-credentials form to the Platform token endpoint, nothing else.
    method, url, form, dummy = sent[0]
    assert (method, url) == ('POST', emulator.root_url + client_mod.PLATFORM_TOKEN_PATH)
    assert form == {'grant_type': 'client_credentials', 'client_id': CLIENT_ID,
                    'client_secret': CLIENT_SECRET, 'scope': 'xpmheadless'}
    # Then the broker, then every API call on the vault's URL, all with the Platform token.
    token = emulator.state()['tokens_issued'][0]
    assert sent[1][:2] == ('GET', emulator.root_url + client_mod.PLATFORM_VAULTS_PATH)
    for method, url, dummy, headers in sent[1:]:
        assert headers.get('Authorization') == 'Bearer ' + token
    assert [url for dummy, url, dummy, dummy in sent[2:]] == [
        emulator.root_url + VAULT_PATH + '/api/v1/configuration/auto-export-storage',
        emulator.root_url + VAULT_PATH + '/api/v1/configuration/auto-export-storage/item/%d'
        % record['id']]
    counts = emulator.state()['counts']
    assert counts['platform_token'] == 1 and counts['token'] == 0 and counts['vaults'] == 1
    assert token in secrets and CLIENT_SECRET in secrets


def test_default_active_vault_is_chosen_over_decoys(emulator):
    # A decoy that is active but not default sits on another loopback host: contacting it at
    # all would be a wrong choice, so the relay counts connections.
    with Relay() as decoy_host:
        emulator.set_vaults([
            vault('Retired default vault', emulator.root_url + '/vault0/SecretServer',
                  active=False),
            vault('Secondary vault', decoy_host.url('/vault2/SecretServer'), default=False),
            vault('Primary vault', emulator.root_url + VAULT_PATH),
            vault('Later default vault', emulator.root_url + '/vault3/SecretServer'),
        ])

        assert platform_client(emulator).list_exports()

    paths = [r['path'] for r in api_requests(emulator)]
    assert paths and all(p.startswith(VAULT_PATH + '/api/v1/') for p in paths)
    assert decoy_host.connections == 0


def test_vault_with_a_sub_path_and_trailing_slash_is_joined_without_doubling(emulator):
    emulator.set_vaults([vault('Primary vault', emulator.root_url + VAULT_PATH + '/')])

    platform_client(emulator).list_exports()

    assert [r['path'] for r in api_requests(emulator)] == [
        VAULT_PATH + '/api/v1/configuration/auto-export-storage']


# ---- where the token may go ------------------------------------------------------------------

def test_vault_host_outside_the_allowed_set_is_refused_without_sending_it_the_token(emulator):
    with Relay() as other_host:
        emulator.set_vaults([vault('Primary vault', other_host.url(VAULT_PATH))])

        with pytest.raises(SecretServerError) as caught:
            platform_client(emulator).list_exports()

        assert other_host.connections == 0
    message = str(caught.value)
    assert other_host.netloc in message and 'allowed_vault_hosts' in message
    assert 'no token was sent there' in message
    state = emulator.state()
    assert state['bearer_hosts'] == ['127.0.0.1:%d' % emulator.port]  # the broker call only
    assert state['counts']['list'] == 0


@pytest.mark.parametrize('allowed', ['127.0.0.2', 'HOST:PORT'])
def test_allowed_vault_hosts_lets_the_discovered_vault_through(emulator, allowed):
    with Relay(target=('127.0.0.1', emulator.port)) as other_host:
        allowed = other_host.netloc if allowed == 'HOST:PORT' else allowed
        emulator.set_vaults([vault('Primary vault', other_host.url(VAULT_PATH))])

        records = platform_client(emulator, allowed_vault_hosts=[allowed]).list_exports()

        assert other_host.connections >= 1
    assert records
    assert other_host.netloc in emulator.state()['bearer_hosts']
    assert api_requests(emulator)[0]['host'] == other_host.netloc


def test_allowed_host_with_another_port_does_not_let_the_vault_through(emulator):
    with Relay() as other_host:
        emulator.set_vaults([vault('Primary vault', other_host.url(VAULT_PATH))])

        with pytest.raises(SecretServerError, match='allowed_vault_hosts'):
            platform_client(emulator, allowed_vault_hosts=['127.0.0.2:1']).list_exports()

        assert other_host.connections == 0


def test_vault_url_skips_discovery_and_is_used_as_given(emulator):
    with Relay(target=('127.0.0.1', emulator.port)) as other_host:
        client = platform_client(emulator, vault_url=other_host.url(VAULT_PATH))

        assert client.list_exports()

    counts = emulator.state()['counts']
    assert counts['vaults'] == 0 and counts['platform_token'] == 1
    assert api_requests(emulator)[0]['host'] == other_host.netloc


# ---- renewal ----------------------------------------------------------------------------------

def test_expired_token_on_an_api_call_gets_one_new_grant_and_the_call_repeated(emulator):
    emulator.add_fault('list', 'expire_tokens')

    assert platform_client(emulator).list_exports()

    state = emulator.state()
    assert state['counts']['platform_token'] == 2
    assert state['counts']['refresh'] == 0 and state['counts']['token'] == 0
    assert [r['status'] for r in api_requests(emulator)] == [401, 200]


def test_expired_token_at_the_broker_gets_one_new_grant_and_the_call_repeated(emulator):
    emulator.add_fault('vaults', 'expire_tokens')

    assert platform_client(emulator).list_exports()

    counts = emulator.state()['counts']
    assert counts['platform_token'] == 2 and counts['vaults'] == 2


def test_a_401_after_the_new_grant_fails_instead_of_signing_in_again(emulator):
    emulator.add_fault('list', 'status', code=401, times=-1)

    with pytest.raises(AuthenticationError):
        platform_client(emulator).list_exports()

    counts = emulator.state()['counts']
    assert counts['platform_token'] == 2 and counts['list'] == 2


# ---- failures the operator must understand -----------------------------------------------------

def test_rejected_client_credentials_say_they_are_the_platform_service_users(emulator):
    with pytest.raises(AuthenticationError) as caught:
        platform_client(emulator, password='not-the-secret').list_exports()

    message = str(caught.value)
    assert 'Platform client-credentials grant' in message
    assert 'client ID and secret of the Platform service user' in message
    assert emulator.state()['counts']['vaults'] == 0


def test_no_default_active_vault_fails_listing_the_vault_names(emulator):
    emulator.set_vaults([
        vault('Retired default vault', emulator.root_url + '/vault0/SecretServer', active=False),
        vault('Secondary vault', emulator.root_url + VAULT_PATH, default=False),
    ])

    with pytest.raises(ProtocolError) as caught:
        platform_client(emulator).list_exports()

    message = str(caught.value)
    assert 'no vault that is both default and active' in message
    assert 'Retired default vault' in message and 'Secondary vault' in message
    assert 'vault_url' in message
    assert emulator.state()['counts']['list'] == 0


@pytest.mark.parametrize('fault', ['invalid_json', 'html200'])
def test_broker_answer_that_is_not_json_says_the_broker_did_not_answer_json(emulator, fault):
    emulator.add_fault('vaults', fault)

    with pytest.raises(ProtocolError) as caught:
        platform_client(emulator).list_exports()

    message = str(caught.value)
    assert 'Platform vault broker did not answer with JSON' in message
    assert client_mod.PLATFORM_VAULTS_PATH in message
    assert emulator.state()['counts']['list'] == 0


def test_broker_json_without_a_vaults_list_says_so(emulator):
    emulator.add_fault('vaults', 'status', code=200, body={'items': []})

    with pytest.raises(ProtocolError, match='no vaults list'):
        platform_client(emulator).list_exports()


# ---- host names only: no request leaves the test ---------------------------------------------

@pytest.mark.parametrize('base_url, expected', [
    ('https://mytenant.delinea.app', True),
    ('https://MyTenant.Delinea.App/', True),
    ('https://mytenant.delinea.app:8443/sub', True),
    ('https://mytenant.secretservercloud.com', False),
    ('https://mytenant.secretservercloud.eu/SecretServer', False),
    ('https://delinea.app.example.net', False),
    ('https://notdelinea.app', False),
    ('https://ss.corp.example', False),
])
def test_platform_defaults_on_for_delinea_app_hosts_without_any_request(
        no_requests, base_url, expected):
    client = SecretServerClient(base_url, username='id', password='secret')

    assert client.platform is expected
    assert isinstance(client.grant, client_mod._PlatformGrant) is expected
    assert isinstance(client.grant, client_mod._PasswordGrant) is not expected


@pytest.mark.parametrize('base_url, platform', [
    ('https://mytenant.delinea.app', False),
    ('https://ss.corp.example', True),
])
def test_explicit_platform_option_wins_over_the_host_name(no_requests, base_url, platform):
    client = SecretServerClient(base_url, username='id', password='secret', platform=platform)

    assert client.platform is platform
    assert isinstance(client.grant, client_mod._PlatformGrant) is platform


@pytest.mark.parametrize('base_url, vault_url, allowed', [
    # https on a Delinea cloud domain
    ('https://t.delinea.app', 'https://t.secretservercloud.com/SecretServer', []),
    ('https://t.delinea.app', 'https://t.secretservercloud.co.uk', []),
    ('https://t.delinea.app', 'https://vault.t.delinea.app/', []),
    # same scheme, host and port as base_url (the default port written or not)
    ('http://127.0.0.1:8080', 'http://127.0.0.1:8080/vault1/SecretServer', []),
    ('https://ss.corp.example', 'https://SS.corp.example:443/SecretServer', []),
    # listed by the operator, as host or host:port
    ('https://t.delinea.app', 'https://vault.corp.example:9443/SecretServer',
     ['vault.corp.example']),
    ('https://t.delinea.app', 'http://vault.corp.example:9443', ['Vault.corp.example:9443']),
])
def test_vault_hosts_that_may_receive_the_token(no_requests, base_url, vault_url, allowed):
    client = SecretServerClient(base_url, username='id', password='secret', platform=True,
                                allowed_vault_hosts=allowed)

    client._check_vault_host(vault_url)


@pytest.mark.parametrize('base_url, vault_url, allowed, named', [
    ('https://t.delinea.app', 'http://t.secretservercloud.com', [], 't.secretservercloud.com:80'),
    ('https://t.delinea.app', 'https://secretservercloud.com.evil.example', [],
     'secretservercloud.com.evil.example:443'),
    ('https://t.delinea.app', 'https://evilsecretservercloud.com', [],
     'evilsecretservercloud.com:443'),
    ('https://t.delinea.app', 'https://t.delinea.app.evil.example', [],
     't.delinea.app.evil.example:443'),
    ('http://127.0.0.1:8080', 'http://127.0.0.1:8081/vault', [], '127.0.0.1:8081'),
    ('http://127.0.0.1:8080', 'https://127.0.0.1:8080/vault', [], '127.0.0.1:8080'),
    ('https://t.delinea.app', 'https://vault.corp.example:9444', ['vault.corp.example:9443'],
     'vault.corp.example:9444'),
    ('https://t.delinea.app', 'https://user:pw@vault.corp.example', [], 'vault.corp.example:443'),
])
def test_vault_hosts_refused_name_the_host_and_the_option(
        no_requests, base_url, vault_url, allowed, named):
    client = SecretServerClient(base_url, username='id', password='secret', platform=True,
                                allowed_vault_hosts=allowed)

    with pytest.raises(SecretServerError) as caught:
        client._check_vault_host(vault_url)

    message = str(caught.value)
    assert named in message and 'allowed_vault_hosts' in message
    assert 'pw@' not in message


@pytest.mark.parametrize('vault_url', ['/SecretServer', 'ftp://vault.example/', 'https://',
                                       'https://vault.example:99999/'])
def test_vault_url_that_is_not_an_absolute_http_url_is_refused(no_requests, vault_url):
    client = SecretServerClient('https://t.delinea.app', username='id', password='secret')

    with pytest.raises(ProtocolError, match='not an absolute http'):
        client._check_vault_host(vault_url)
