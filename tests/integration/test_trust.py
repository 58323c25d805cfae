"""Trust, end to end: every stored archive proven restorable, and sign-in through the Platform.

The modules run as Ansible runs them on a managed host (support.run_module) and the role and
the restore drill through ansible-playbook (support.run_playbook), all against the emulator.

After every test, no file under the test's temporary tree - dest, the module's remote tmp,
Ansible's local and remote temp directories, the TMPDIR the modules were given - may hold a
plaintext value from inside the archives (the emulator's markers): the proof decrypts in
memory only.
"""

import json
import os
import re

import pytest

import support
from relay import Relay
from server import xml_ciphertext_offset
from support import USER, files_in, run_module, run_playbook

# Distinctive, so finding one in an output cannot be a coincidence.
EXPORT_PASSWORD = 'exp-5b7f0e93-trust-proof'
PLATFORM_CLIENT = {'username': 'svc-backup', 'password': 'svc-backup-secret'}
VAULT_PATH = '/vault1/SecretServer'
MARKER_RE = re.compile(rb'PLAINTEXT-[0-9]+-[0-9a-f]+')

WRONG_PASSWORD_MSG = 'The export password does not open'
DAMAGED_MSG = 'is damaged'


@pytest.fixture
def emulator(tmp_path):
    with support.Emulator(password=EXPORT_PASSWORD) as emu:
        yield emu
        assert_no_plaintext(tmp_path, emu.markers())


def assert_no_plaintext(root, markers):
    # The pattern also catches markers of a data set a test replaced along the way.
    known = [m.encode('ascii') for m in markers]
    holding = []
    for directory, dummy, names in os.walk(str(root)):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, 'rb') as handle:
                data = handle.read()
            if MARKER_RE.search(data) or any(m in data for m in known):
                holding.append(path)
    assert not holding, 'plaintext from inside an archive found in %s' % holding


def module_tmp(tmp_path):
    path = tmp_path / 'module-tmpdir'
    path.mkdir(exist_ok=True)
    return {'TMPDIR': str(path)}


def fetch(emulator, tmp_path, dest, env=None, **args):
    params = dict(USER, base_url=emulator.url, dest=str(dest))
    params.update(args)
    extra = module_tmp(tmp_path)
    extra.update(env or {})
    run = run_module('secretserver_export_fetch', params, tmp_path, env=extra)
    assert not MARKER_RE.search(run.stdout.encode() + run.stderr.encode())
    return run


def downloadable(emulator):
    records = sorted(emulator.records(), key=lambda r: (r['storageDate'], r['id']), reverse=True)
    return [r for r in records if r['canDownload']]


def flip_ciphertext_byte(path):
    """Damage the encrypted XML of a stored archive in place; its central directory stays."""
    offset = xml_ciphertext_offset(str(path))
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    return bytes(data)


# ---- the proof on fetch -------------------------------------------------------------------------

@pytest.mark.parametrize('secrets, folders', [(7, 4), (0, 0)])
def test_fetched_archive_reports_the_secret_and_folder_counts_the_emulator_put_in_it(
        emulator, tmp_path, secrets, folders):
    emulator.set_exports(secrets=secrets, folders=folders)
    newest = downloadable(emulator)[0]
    dest = tmp_path / 'backups'

    run = fetch(emulator, tmp_path, dest, export_password=EXPORT_PASSWORD)

    assert not run.failed, run
    assert run.result['contents'] == {'secrets': secrets, 'folders': folders}
    assert run.result['archives'][0]['contents'] == {'secrets': secrets, 'folders': folders}
    name = newest['filename'] + '.zip'
    assert files_in(str(dest)) == {name: emulator.archive_bytes(newest['id'])}


def test_export_password_from_the_environment_is_used(emulator, tmp_path):
    emulator.set_exports(secrets=7, folders=4)

    run = fetch(emulator, tmp_path, tmp_path / 'backups',
                env={'TSS_EXPORT_PASSWORD': EXPORT_PASSWORD})

    assert not run.failed, run
    assert run.result['contents'] == {'secrets': 7, 'folders': 4}


@pytest.mark.parametrize('failure', ['wrong_password', 'flipped_byte'])
@pytest.mark.parametrize('previous', ['older_archive', 'same_archive_forced'])
def test_failed_proof_says_which_failure_and_leaves_the_previous_state_untouched(
        emulator, tmp_path, failure, previous):
    newest, older = downloadable(emulator)[:2]
    dest = tmp_path / 'backups'
    # The state a previous night left: an older archive, or this very one (then force: true
    # asks to replace it).
    kept = older if previous == 'older_archive' else newest
    assert not fetch(emulator, tmp_path, dest, export_id=kept['id'],
                     export_password=EXPORT_PASSWORD).failed
    before = files_in(str(dest))
    emulator.reset()
    password = EXPORT_PASSWORD
    if failure == 'wrong_password':
        password = 'not-' + EXPORT_PASSWORD
    else:
        emulator.add_fault('download', 'flip_byte')

    run = fetch(emulator, tmp_path, dest, export_id=newest['id'], export_password=password,
                force=previous == 'same_archive_forced')

    assert run.failed
    message = run.result['msg']
    assert newest['filename'] + '.zip' in message
    if failure == 'wrong_password':
        assert WRONG_PASSWORD_MSG in message and DAMAGED_MSG not in message
    else:
        assert DAMAGED_MSG in message and WRONG_PASSWORD_MSG not in message
    assert 'contents' not in run.result
    # The archive was downloaded whole; the proof, not the transfer, refused it.
    assert emulator.state()['counts']['download'] == 1
    assert files_in(str(dest)) == before  # byte-identical, and no new or temporary file


def test_archive_already_present_is_not_reopened_unless_reverify(emulator, tmp_path):
    emulator.set_exports(secrets=7, folders=4)
    newest = downloadable(emulator)[0]
    dest = tmp_path / 'backups'
    assert not fetch(emulator, tmp_path, dest, export_password=EXPORT_PASSWORD).failed
    stored = dest / (newest['filename'] + '.zip')
    # Damage only the encrypted XML: only opening the archive can notice.
    damaged = flip_ciphertext_byte(stored)
    emulator.reset()

    plain = fetch(emulator, tmp_path, dest, export_password=EXPORT_PASSWORD)

    assert not plain.failed, plain
    assert plain.result['downloaded'] is False and 'contents' not in plain.result

    reopened = fetch(emulator, tmp_path, dest, export_password=EXPORT_PASSWORD, reverify=True)

    assert reopened.failed
    assert DAMAGED_MSG in reopened.result['msg'] and stored.name in reopened.result['msg']
    assert stored.read_bytes() == damaged
    assert emulator.state()['counts']['download'] == 0

    stored.write_bytes(emulator.archive_bytes(newest['id']))
    healthy = fetch(emulator, tmp_path, dest, export_password=EXPORT_PASSWORD, reverify=True)

    assert not healthy.failed, healthy
    assert healthy.result['contents'] == {'secrets': 7, 'folders': 4}
    assert healthy.result['downloaded'] is False


def test_missing_pyzipper_fails_before_downloading_and_names_the_package(emulator, tmp_path):
    # A managed-host Python without pyzipper: a package of that name that fails to import,
    # first on the path, hides the installed one exactly as its absence would.
    shim = tmp_path / 'no-pyzipper'
    (shim / 'pyzipper').mkdir(parents=True)
    (shim / 'pyzipper' / '__init__.py').write_text(
        "raise ImportError(\"No module named 'pyzipper'\")\n")
    env = {'PYTHONPATH': os.pathsep.join([str(shim), support.COLLECTIONS])}
    dest = tmp_path / 'backups'

    run = fetch(emulator, tmp_path, dest, env=env, export_password=EXPORT_PASSWORD)

    assert run.failed
    assert 'pyzipper' in run.result['msg'] and 'pip install pyzipper' in run.result['msg']
    assert emulator.state()['counts']['download'] == 0
    assert not dest.exists()

    # The library is needed for the proof only: without export_password the same host stores.
    stored = fetch(emulator, tmp_path, dest, env=env)

    assert not stored.failed, stored
    assert stored.result['downloaded'] is True


@pytest.mark.skipif(not os.environ.get('SSB_PYTHON_WITHOUT_PYZIPPER'),
                    reason='set SSB_PYTHON_WITHOUT_PYZIPPER to a managed-host Python that has '
                           'requests but not pyzipper (e.g. a venv with only requests)')
def test_role_on_a_host_python_without_pyzipper_names_the_package(emulator, tmp_path):
    python = os.environ['SSB_PYTHON_WITHOUT_PYZIPPER']
    dest = tmp_path / 'backups'
    extra_vars = {'backup_exports_base_url': emulator.url, 'backup_exports_dest': str(dest),
                  'backup_exports_username': USER['username'],
                  'backup_exports_password': USER['password'],
                  'backup_exports_export_password': EXPORT_PASSWORD}
    env = dict(module_tmp(tmp_path), ANSIBLE_PYTHON_INTERPRETER=python)

    run = run_playbook(os.path.join(support.ROOT, 'playbooks', 'backup.yml'), tmp_path,
                       extra_vars=extra_vars, env=env)

    assert run.rc != 0
    assert 'needs the Python package pyzipper' in run.output
    assert 'pip install pyzipper' in run.output
    assert emulator.state()['counts']['download'] == 0
    assert not dest.exists()


# ---- the restore drill module -------------------------------------------------------------------

def test_archive_verify_proves_every_archive_and_reports_each_one(emulator, tmp_path):
    emulator.set_exports(count=3, secrets=7, folders=4, not_downloadable=[])
    dest = tmp_path / 'backups'
    assert not fetch(emulator, tmp_path, dest, select='all').failed
    names = sorted((r['filename'] + '.zip' for r in downloadable(emulator)), reverse=True)
    flip_ciphertext_byte(dest / names[1])
    before = files_in(str(dest))

    run = run_module('secretserver_archive_verify',
                     {'path': str(dest), 'export_password': EXPORT_PASSWORD}, tmp_path,
                     env=module_tmp(tmp_path))

    assert run.failed
    by_name = dict((a['name'], a) for a in run.result['archives'])
    assert sorted(by_name, reverse=True) == names
    for name in (names[0], names[2]):
        assert by_name[name]['result'] == 'ok'
        assert (by_name[name]['secrets'], by_name[name]['folders']) == (7, 4)
    assert by_name[names[1]]['result'] == 'failed'
    assert DAMAGED_MSG in by_name[names[1]]['msg']
    assert names[1] in run.result['msg'] and names[0] not in run.result['msg']
    assert run.result['proven'] == 2 and run.result['unopened'] == 1
    assert files_in(str(dest)) == before


# ---- Platform sign-in through the module ---------------------------------------------------------

def platform_fetch(emulator, tmp_path, dest, **args):
    params = dict(PLATFORM_CLIENT, base_url=emulator.root_url, platform=True, dest=str(dest))
    params.update(args)
    return run_module('secretserver_export_fetch', params, tmp_path, env=module_tmp(tmp_path))


def test_platform_fetch_stores_and_proves_through_the_discovered_vault(emulator, tmp_path):
    emulator.set_exports(secrets=7, folders=4)
    newest = downloadable(emulator)[0]
    dest = tmp_path / 'backups'

    run = platform_fetch(emulator, tmp_path, dest, export_password=EXPORT_PASSWORD)

    assert not run.failed, run
    assert run.result['contents'] == {'secrets': 7, 'folders': 4}
    name = newest['filename'] + '.zip'
    assert files_in(str(dest)) == {name: emulator.archive_bytes(newest['id'])}
    state = emulator.state()
    api = [r for r in state['requests'] if r['route'] in ('list', 'download')]
    assert api and all(r['path'].startswith(VAULT_PATH + '/api/v1/') for r in api)
    assert state['counts']['token'] == 0 and state['counts']['platform_token'] == 1


def test_platform_fetch_refuses_a_vault_host_outside_the_allowed_set(emulator, tmp_path):
    dest = tmp_path / 'backups'
    with Relay(target=('127.0.0.1', emulator.port)) as other_host:
        emulator.set_vaults([{'name': 'Primary vault', 'isDefault': True, 'isActive': True,
                              'connection': {'url': other_host.url(VAULT_PATH)}}])

        refused = platform_fetch(emulator, tmp_path, dest)

        assert other_host.connections == 0
        assert refused.failed
        assert other_host.netloc in refused.result['msg']
        assert 'allowed_vault_hosts' in refused.result['msg']
        assert emulator.state()['bearer_hosts'] == ['127.0.0.1:%d' % emulator.port]
        assert not dest.exists()

        allowed = platform_fetch(emulator, tmp_path, dest, allowed_vault_hosts=['127.0.0.2'])

        assert not allowed.failed, allowed
        assert other_host.connections >= 1
    assert other_host.netloc in emulator.state()['bearer_hosts']
    assert allowed.result['downloaded'] is True


# ---- the role and the drill playbook, as operators run them --------------------------------------

def task_result(output, task_name):
    """The result the default callback printed for a task at -v or more, parsed."""
    match = re.search(r'TASK \[[^\]]*%s\].*?\n(?:changed|ok): \[localhost\] => (\{.*?\n\})\n'
                      % re.escape(task_name), output, re.S)
    assert match, 'no result for the task %r in:\n%s' % (task_name, output[-3000:])
    return json.loads(match.group(1))


def test_role_backs_up_through_the_platform_proves_each_archive_and_hides_secrets_at_vvv(
        emulator, tmp_path):
    emulator.set_exports(count=3, secrets=7, folders=4, not_downloadable=[])
    dest = tmp_path / 'backups'
    extra_vars = {
        'backup_exports_base_url': emulator.root_url,
        'backup_exports_username': PLATFORM_CLIENT['username'],
        'backup_exports_password': PLATFORM_CLIENT['password'],
        'backup_exports_platform': True,
        'backup_exports_export_password': EXPORT_PASSWORD,
        'backup_exports_dest': str(dest),
        'backup_exports_select': 'all',
        'backup_exports_keep': 3,
        'backup_exports_controller_cache': str(tmp_path / 'cache'),
    }
    env = module_tmp(tmp_path)

    backup = run_playbook(os.path.join(support.ROOT, 'playbooks', 'backup.yml'), tmp_path,
                          extra_vars=extra_vars, verbosity=3, env=env)

    assert backup.rc == 0, backup.output[-4000:]
    assert backup.recap()['failed'] == 0
    records = downloadable(emulator)
    archives = dict((r['filename'] + '.zip', emulator.archive_bytes(r['id'])) for r in records)
    held = files_in(str(dest))
    assert dict((n, held[n]) for n in archives if n in held) == archives
    # Each new archive was opened before it was stored: the fetch result says what it holds.
    fetched = task_result(backup.output, 'Fetch on the managed host')
    assert sorted(a['archive_name'] for a in fetched['archives']) == sorted(archives)
    assert all(a['contents'] == {'secrets': 7, 'folders': 4} for a in fetched['archives'])
    state = emulator.state()
    assert state['counts']['token'] == 0 and state['counts']['platform_token'] >= 1
    assert state['bearer_hosts'] == ['127.0.0.1:%d' % emulator.port]
    api = [r for r in state['requests'] if r['route'] in ('list', 'download')]
    assert api and all(r['path'].startswith(VAULT_PATH + '/api/v1/') for r in api)

    drill = run_playbook(os.path.join(support.ROOT, 'playbooks', 'verify.yml'), tmp_path,
                         extra_vars={'backup_exports_dest': str(dest),
                                     'backup_exports_export_password': EXPORT_PASSWORD},
                         verbosity=3, env=env)

    assert drill.rc == 0, drill.output[-4000:]
    for name in archives:
        assert '%s: ok, 7 secrets, 4 folders' % name in drill.output

    secrets = [EXPORT_PASSWORD, PLATFORM_CLIENT['password']] + state['tokens_issued']
    for run in (backup, drill):
        leaked = [s for s in secrets if s in run.output]
        assert not leaked, 'secret values in the -vvv output: %d of them' % len(leaked)


def test_drill_playbook_reports_every_archive_then_fails_naming_the_damaged_one(
        emulator, tmp_path):
    emulator.set_exports(count=2, secrets=7, folders=4, not_downloadable=[])
    dest = tmp_path / 'backups'
    assert not fetch(emulator, tmp_path, dest, select='all').failed
    good, bad = sorted((r['filename'] + '.zip' for r in downloadable(emulator)), reverse=True)
    flip_ciphertext_byte(dest / bad)
    # As an operator's inventory would give them: the drill must not override these.
    inventory = tmp_path / 'inventory.json'
    inventory.write_text(json.dumps({'all': {'hosts': {'localhost': {
        'backup_exports_dest': str(dest),
        'backup_exports_export_password': EXPORT_PASSWORD}}}}))

    drill = run_playbook(os.path.join(support.ROOT, 'playbooks', 'verify.yml'), tmp_path,
                         inventory=str(inventory), env=module_tmp(tmp_path))

    assert drill.rc != 0
    assert '%s: ok, 7 secrets, 4 folders' % good in drill.output
    assert '%s: failed' % bad in drill.output
    assert drill.recap()['failed'] == 1
    assert EXPORT_PASSWORD not in drill.output
