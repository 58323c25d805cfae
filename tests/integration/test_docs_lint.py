"""ansible-doc renders every module and the role without an error or a warning, what the
module docs claim about the action group matches meta/runtime.yml, and the first-backup playbook
of docs/guide.md runs as printed.

`make lint` already runs ansible-lint (production profile) on roles/ and playbooks/ and
`antsibull-docs lint-collection-docs --plugin-docs`, so they are not repeated here; `make docs`
runs ansible-doc but only looks at its exit status, and is not part of `make test`.
"""

import os
import re
import stat
import subprocess

import pytest
import yaml

import support

ANSIBLE_DOC = os.path.join(support.BIN_DIR, 'ansible-doc')
MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(support.ROOT, 'plugins', 'modules'))
                 if name.endswith('.py') and not name.startswith('_'))
ROLES = sorted(name for name in os.listdir(os.path.join(support.ROOT, 'roles'))
               if os.path.isdir(os.path.join(support.ROOT, 'roles', name)))
GROUP = 'secretserver.backup.secretserver'


def ansible_doc(*args):
    if not os.path.exists(ANSIBLE_DOC):
        pytest.skip('ansible-doc is not installed beside %s' % support.BIN_DIR)
    env = support.module_env({'ANSIBLE_COLLECTIONS_PATH': support.COLLECTIONS,
                              'ANSIBLE_NOCOLOR': '1'})
    env.pop('PYTHONPATH', None)
    return subprocess.run([ANSIBLE_DOC] + list(args), capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)


def own_warnings(stderr):
    """stderr less ansible-core's warning about its own bundled collection (2.21 prints one)."""
    return '\n'.join(line for line in stderr.splitlines()
                     if line.strip() and 'ansible/_internal/ansible_collections' not in line)


def documentation(module):
    completed = ansible_doc('--json', '-t', 'module', 'secretserver.backup.' + module)
    assert completed.returncode == 0, completed.stderr
    return yaml.safe_load(completed.stdout)['secretserver.backup.' + module]['doc']


def test_every_module_and_role_is_found():
    assert MODULES and ROLES
    assert 'secretserver_export_fetch' in MODULES and 'backup_exports' in ROLES


@pytest.mark.parametrize('module', MODULES)
def test_ansible_doc_renders_module_without_error_or_warning(module):
    completed = ansible_doc('-t', 'module', 'secretserver.backup.' + module)

    assert completed.returncode == 0, completed.stderr
    assert own_warnings(completed.stderr) == ''
    assert 'secretserver.backup.' + module in completed.stdout
    assert 'EXAMPLES:' in completed.stdout and 'RETURN VALUES:' in completed.stdout


@pytest.mark.parametrize('role', ROLES)
def test_ansible_doc_renders_role_without_error_or_warning(role):
    completed = ansible_doc('-t', 'role', 'secretserver.backup.' + role)

    assert completed.returncode == 0, completed.stderr
    assert own_warnings(completed.stderr) == ''
    assert 'ENTRY POINT:' in completed.stdout and 'backup_exports_base_url' in completed.stdout


def test_action_group_in_module_docs_matches_runtime_yml():
    with open(os.path.join(support.ROOT, 'meta', 'runtime.yml')) as handle:
        group = yaml.safe_load(handle)['action_groups']['secretserver']
    documented = []
    for module in MODULES:
        attribute = documentation(module).get('attributes', {}).get('action_group')
        assert attribute, '%s documents no action_group attribute' % module
        if GROUP in (attribute.get('membership') or []):
            assert attribute['support'] == 'full', module
            documented.append(module)
        else:
            assert attribute['support'] == 'none', module
    assert sorted(documented) == sorted(group)


def guide_playbook(marker):
    with open(os.path.join(support.ROOT, 'docs', 'guide.md')) as handle:
        blocks = re.findall(r'^```yaml\n(.*?)^```', handle.read(), re.M | re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, 'docs/guide.md has %d yaml blocks with %s' % (len(found), marker)
    return found[0]


def test_guide_first_backup_playbook_stores_the_newest_archive(emulator, tmp_path):
    playbook = tmp_path / 'first-backup.yml'
    playbook.write_text(guide_playbook('group/secretserver.backup.secretserver'))
    inventory = tmp_path / 'inventory'
    inventory.write_text('[backup_hosts]\nlocalhost ansible_connection=local\n')
    dest = tmp_path / 'backups'
    records = sorted(emulator.records(), key=lambda r: (r['storageDate'], r['id']), reverse=True)
    newest = next(r for r in records if r['canDownload'])
    # Only the values a reader replaces: the tenant, the account, the directory; no root needed.
    overrides = {'secretserver_url': emulator.url,
                 'secretserver_username': support.USER['username'],
                 'secretserver_password': support.USER['password'],
                 'backup_dest': str(dest), 'ansible_become': False}

    run = support.run_playbook(str(playbook), tmp_path, extra_vars=overrides,
                               inventory=str(inventory))

    assert run.rc == 0, run.output[-4000:]
    archive = dest / (newest['filename'] + '.zip')
    assert archive.read_bytes() == emulator.archive_bytes(newest['id'])
    assert stat.S_IMODE(os.stat(str(archive)).st_mode) == 0o600
    assert sorted(os.listdir(str(dest))) == sorted([archive.name, 'SHA256SUMS'])
