"""The shared client against the emulator: sign-in, paging, renewal, error messages, TLS."""

import math

import pytest

import support
from support import Sink
from ansible_collections.secretserver.backup.plugins.module_utils import client as client_mod
from ansible_collections.secretserver.backup.plugins.module_utils.client import SecretServerClient
from ansible_collections.secretserver.backup.plugins.module_utils.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    TLSError,
)


def make_client(emulator, secrets=None, **kwargs):
    args = dict(username='backup', password='backup-password')
    args.update(kwargs)
    registered = secrets if secrets is not None else []
    return SecretServerClient(args.pop('base_url', emulator.url),
                              register_secret=registered.append, **args)


def test_list_follows_pages_until_has_next_is_false(emulator):
    emulator.set_exports(count=1234)
    emulator.configure(take_cap=500)

    exports = make_client(emulator).list_exports()

    assert len(exports) == 1234
    assert len({e['id'] for e in exports}) == 1234
    lists = emulator.state()['counts']['list']
    assert lists == math.ceil(1234 / 500)


def test_list_of_ten_thousand_exports_asks_for_large_pages(emulator):
    emulator.set_exports(count=10000, archive_size=0)

    exports = make_client(emulator).list_exports()

    assert len(exports) == 10000
    assert emulator.state()['counts']['list'] <= math.ceil(10000 / 500) + 1
    timestamps = [e['storage_timestamp'] for e in exports]
    assert timestamps == sorted(timestamps, reverse=True)


def test_list_per_configuration_uses_that_endpoint(emulator):
    exports = make_client(emulator).list_exports(configuration_id=2)

    assert exports and all(e['auto_export_configuration_id'] == 2 for e in exports)
    paths = [r['path'] for r in emulator.state()['requests'] if 'auto-export' in r['path']]
    assert paths and all(p.endswith('/configuration/auto-export-storage/2') for p in paths)


def test_password_grant_is_form_encoded_and_tokens_are_registered_as_secrets(emulator):
    secrets = []
    make_client(emulator, secrets=secrets).list_exports()

    state = emulator.state()
    assert state['counts']['token'] == 1
    assert 'backup-password' in secrets
    for token in state['tokens_issued']:
        assert token in secrets


@pytest.mark.parametrize('base', ['{url}/', '{url}/api/v1', '{url}/api/v1/'])
def test_trailing_slash_and_api_suffix_do_not_double_the_path(emulator, base):
    exports = make_client(emulator, base_url=base.format(url=emulator.url)).list_exports()

    assert exports
    assert not any('/api/v1/api/v1' in r['path'] for r in emulator.state()['requests'])


def test_base_url_with_sub_path_is_kept():
    with support.Emulator(prefix='/SecretServer') as emu:
        exports = make_client(emu, base_url=emu.url).list_exports()

        assert emu.url.endswith('/SecretServer')
        assert exports
        assert all(r['path'].startswith('/SecretServer/') for r in emu.state()['requests'])


def test_bad_password_is_an_authentication_error_naming_what_to_check(emulator):
    with pytest.raises(AuthenticationError) as caught:
        make_client(emulator, password='wrong').list_exports()

    message = str(caught.value)
    assert 'refused the password grant' in message and 'Check username, password' in message
    assert 'wrong' not in message


def test_expired_token_is_renewed_once_and_the_call_repeated(emulator):
    client = make_client(emulator)
    client.list_exports()
    emulator.add_fault('list', 'expire_tokens')

    assert client.list_exports()
    counts = emulator.state()['counts']
    assert counts['refresh'] + counts['token'] == 2


def test_second_401_in_a_row_is_an_authentication_failure(emulator):
    client = make_client(emulator)
    emulator.add_fault('list', 'status', code=401, times=2)

    with pytest.raises(AuthenticationError) as caught:
        client.list_exports()
    assert 'renewing it did not help' in str(caught.value)


def test_given_token_cannot_be_renewed_and_says_so(emulator):
    client = make_client(emulator, username=None, password=None, token='no-such-token')

    with pytest.raises(AuthenticationError) as caught:
        client.list_exports()
    assert 'cannot be renewed' in str(caught.value)


def test_token_together_with_username_is_refused_but_blank_values_count_as_unset(emulator):
    with pytest.raises(client_mod.SecretServerError) as caught:
        make_client(emulator, token='abc')
    assert 'mutually exclusive' in str(caught.value)

    assert make_client(emulator, token='', domain='').list_exports()


def test_missing_view_permission_names_the_permission(emulator):
    with pytest.raises(PermissionDeniedError) as caught:
        make_client(emulator, username='nobody', password='nobody-password').list_exports()
    assert 'View Automatic Export' in str(caught.value)
    assert '403' in str(caught.value)


def test_missing_download_permission_names_the_permission(emulator):
    client = make_client(emulator, username='viewer', password='viewer-password')
    export = client.list_exports()[0]

    with pytest.raises(PermissionDeniedError) as caught:
        client.download(export['id'], Sink())
    assert 'Download Automatic Export' in str(caught.value)


def test_unknown_export_is_not_found_and_not_retried(emulator):
    with pytest.raises(NotFoundError):
        make_client(emulator).download(999999, Sink())
    assert emulator.state()['counts']['download'] == 1


def test_html_page_instead_of_json_says_base_url_points_at_a_sign_in_page(emulator):
    emulator.add_fault('list', 'html200')

    with pytest.raises(ProtocolError) as caught:
        make_client(emulator).list_exports()
    assert 'HTML page' in str(caught.value) and 'sign-in page' in str(caught.value)


def test_download_streams_the_exact_bytes(emulator):
    export = make_client(emulator).list_exports()[0]
    sink = Sink()

    make_client(emulator).download(export['id'], sink)

    assert bytes(sink.data) == emulator.archive_bytes(export['id'])


def test_tls_needs_ca_path_and_says_so():
    with support.Emulator(tls=True) as emu:
        with pytest.raises(TLSError) as caught:
            make_client(emu).list_exports()
        assert 'ca_path' in str(caught.value)

        assert make_client(emu, ca_path=emu.ca_file).list_exports()
        assert make_client(emu, validate_certs=False).list_exports()
