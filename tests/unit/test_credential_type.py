"""The AWX / AAP credential type in extensions/awx agrees with the modules and the role.

Its env injectors must be the variables the modules fall back to, its extra vars must be role
options, and the role defaults must read the same variables; a credential with blank fields
(which AWX renders as empty strings) must work, because the client treats empty as unset.
"""

import json
import os
import re
import urllib.parse
import urllib.request

import jinja2
import jinja2.meta
import pytest
import yaml

import support
from awx_credential import load_credential_type, render_injectors

from ansible_collections.secretserver.backup.plugins.module_utils import client as client_mod
from ansible_collections.secretserver.backup.plugins.module_utils.errors import SecretServerError
from ansible_collections.secretserver.backup.plugins.modules import secretserver_export_fetch

ROLE = os.path.join(support.ROOT, 'roles', 'backup_exports')
FIELDS = ['base_url', 'username', 'password', 'domain', 'token', 'export_password']
SECRET_FIELDS = {'password', 'token', 'export_password'}
# Connection options with an env fallback that are deployment paths, not credentials.
NOT_CREDENTIALS = {'api_path_uri', 'token_path_uri'}
ENV_LOOKUP = re.compile(r"^\{\{ lookup\('ansible\.builtin\.env', '([A-Z_]+)'\) \}\}$")


@pytest.fixture(scope='module')
def credential_type():
    return load_credential_type()


def env_fallbacks():
    """Option name -> the environment variable it falls back to, over every module option."""
    spec = dict(client_mod.CONNECTION_ARGSPEC)
    spec.update(secretserver_export_fetch.argument_spec())
    found = {}
    for name, option in spec.items():
        fallback = option.get('fallback')
        if fallback:
            strategy, names = fallback
            assert strategy.__name__ == 'env_fallback', name
            assert len(names) == 1, name
            found[name] = names[0]
    return found


def role_options():
    with open(os.path.join(ROLE, 'meta', 'argument_specs.yml')) as handle:
        return yaml.safe_load(handle)['argument_specs']['main']['options']


def role_defaults():
    with open(os.path.join(ROLE, 'defaults', 'main.yml')) as handle:
        return yaml.safe_load(handle)


def variables_of(template):
    return jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))


def test_credential_type_has_the_fields_and_keys_the_awx_api_takes(credential_type):
    assert set(credential_type) == {'name', 'description', 'kind', 'inputs', 'injectors'}
    assert credential_type['name'] and credential_type['description']
    assert credential_type['kind'] == 'cloud'
    fields = credential_type['inputs']['fields']
    assert [field['id'] for field in fields] == FIELDS
    for field in fields:
        assert set(field) <= {'id', 'label', 'type', 'secret', 'help_text'}, field
        assert field['type'] == 'string' and field['label'], field
        assert field.get('secret', False) is (field['id'] in SECRET_FIELDS), field
    assert credential_type['inputs']['required'] == ['base_url']
    assert set(credential_type['injectors']) == {'env', 'extra_vars'}


def test_every_injector_template_names_one_defined_field(credential_type):
    for kind in ('env', 'extra_vars'):
        for name, template in credential_type['injectors'][kind].items():
            assert len(variables_of(template)) == 1, (kind, name, template)
            assert variables_of(template) <= set(FIELDS), (kind, name, template)


def test_env_injectors_are_the_env_fallbacks_of_the_module_options(credential_type):
    fallbacks = env_fallbacks()
    expected = dict((fallbacks[field], '{{ %s }}' % field) for field in FIELDS)
    assert credential_type['injectors']['env'] == expected


def test_only_api_paths_fall_back_to_env_variables_the_credential_does_not_inject(
        credential_type):
    fallbacks = env_fallbacks()
    injected = set(credential_type['injectors']['env'])
    left_out = set(name for name, env in fallbacks.items() if env not in injected)
    assert left_out == NOT_CREDENTIALS


def test_extra_vars_injectors_are_role_options(credential_type):
    options = role_options()
    extra_vars = credential_type['injectors']['extra_vars']
    assert extra_vars == {'backup_exports_base_url': '{{ base_url }}'}
    for name in extra_vars:
        assert name in options, name
    # The role has no default for the tenant URL: the extra var is how it gets one in AWX.
    assert options['backup_exports_base_url'].get('required') is True
    assert 'backup_exports_base_url' not in role_defaults()


def test_role_defaults_read_exactly_the_env_variables_the_credential_injects(credential_type):
    injected = credential_type['injectors']['env']
    read = {}
    for name, value in role_defaults().items():
        match = ENV_LOOKUP.match(value) if isinstance(value, str) else None
        if match and match.group(1).startswith('TSS_'):
            read[name] = match.group(1)
    expected = dict(('backup_exports_' + field, env) for env, template in injected.items()
                    for field in variables_of(template) if field != 'base_url')
    assert read == expected
    assert set(read.values()) == set(injected) - {'TSS_BASE_URL'}
    for name in read:
        assert name in role_options(), name


def test_blank_fields_render_as_empty_strings_like_awx(credential_type):
    env, extra_vars = render_injectors(credential_type, {
        'base_url': 'https://mytenant.secretservercloud.com', 'username': 'backup-svc',
        'password': 'p@ss {{ not a template }}', 'domain': '', 'token': ''})

    assert env == {
        'TSS_BASE_URL': 'https://mytenant.secretservercloud.com', 'TSS_USERNAME': 'backup-svc',
        'TSS_PASSWORD': 'p@ss {{ not a template }}', 'TSS_DOMAIN': '', 'TSS_TOKEN': '',
        'TSS_EXPORT_PASSWORD': ''}
    assert extra_vars == {'backup_exports_base_url': 'https://mytenant.secretservercloud.com'}


def test_client_treats_empty_token_and_domain_as_unset():
    client = client_mod.SecretServerClient('https://tenant.example', username='backup',
                                           password='backup-password', domain='', token='')

    assert isinstance(client.grant, client_mod._PasswordGrant)
    assert 'domain' not in client.grant.form


def test_client_treats_empty_username_and_password_beside_a_token_as_unset():
    client = client_mod.SecretServerClient('https://tenant.example', username='', password='',
                                           domain='', token='a-token')

    assert isinstance(client.grant, client_mod._StaticToken)


def test_client_with_every_credential_blank_says_no_credentials_were_given():
    with pytest.raises(SecretServerError, match='no credentials were given'):
        client_mod.SecretServerClient('https://tenant.example', username='', password='',
                                      domain='', token='')


def newest_downloadable(emulator):
    records = sorted(emulator.records(), key=lambda r: (r['storageDate'], r['id']), reverse=True)
    return next(r for r in records if r['canDownload'])


def test_fetch_runs_on_a_credential_with_blank_domain_and_token_alone(
        credential_type, emulator, tmp_path):
    env = render_injectors(credential_type, {
        'base_url': emulator.url, 'username': support.USER['username'],
        'password': support.USER['password'], 'domain': '', 'token': '',
        'export_password': 'export-password'})[0]
    newest = newest_downloadable(emulator)
    dest = tmp_path / 'backups'

    run = support.run_module('secretserver_export_fetch', {'dest': str(dest)}, tmp_path, env=env)

    assert not run.failed, run
    assert run.result['contents']['secrets'] > 0
    stored = dest / (newest['filename'] + '.zip')
    assert stored.read_bytes() == emulator.archive_bytes(newest['id'])


def test_info_runs_on_a_credential_holding_only_a_token(credential_type, emulator, tmp_path):
    form = urllib.parse.urlencode(dict(support.USER, grant_type='password')).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(emulator.url + '/oauth2/token', data=form, timeout=30) as answer:
        token = json.loads(answer.read())['access_token']
    env = render_injectors(credential_type, {'base_url': emulator.url, 'token': token})[0]
    assert env['TSS_USERNAME'] == '' and env['TSS_PASSWORD'] == ''

    run = support.run_module('secretserver_export_info', {}, tmp_path, env=env)

    assert not run.failed, run
    assert run.result['total'] == len(emulator.records())
    assert emulator.state()['counts']['token'] == 1
