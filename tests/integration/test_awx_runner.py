"""playbooks/backup.yml run by ansible-runner the way AWX / AAP runs a job template.

The private data dir is laid out as AWX renders a job: project/ holds the playbook, inventory/
the hosts, env/envvars and env/extravars what the job template and the collection's credential
type (extensions/awx/credential_type.yml, rendered as AWX renders it) inject. Process isolation
is off and no container is used. The job must store the archive byte-identical and owner-only,
and no output a job shows (events, the stdout artifact, job_events/*.json) may hold the
password, the export password or any access token, also at verbosity 3.

env/ and the artifact 'command' (which records the job's environment) hold the secrets by
design: they are the job's input, private to the job and removed by AWX afterwards.

The export password makes the modules open each new archive, which needs pyzipper where they
run. A managed-host Python without it (the matrix's managed venvs hold only requirements.txt)
gets a credential with the export password left blank, as an operator without pyzipper would
configure it; everything else is checked the same.
"""

import glob
import json
import os
import shutil
import stat
import subprocess

import pytest
import yaml

import support
from awx_credential import dump_extra_vars, load_credential_type, render_injectors

ansible_runner = pytest.importorskip(
    'ansible_runner', reason='ansible-runner is not installed (pip install ansible-runner)')

# Distinctive, so finding one in the output cannot be a coincidence.
EXPORT_PASSWORD = 'exp-9d41e7c2-restore'


def managed_python_has_pyzipper():
    return subprocess.run([support.MANAGED_PYTHON, '-c', 'import pyzipper'],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=60, check=False).returncode == 0


@pytest.fixture(scope='module')
def export_password():
    """The credential's export password: blank where the modules could not use it."""
    return EXPORT_PASSWORD if managed_python_has_pyzipper() else ''


@pytest.fixture
def emulator():
    with support.Emulator(password=EXPORT_PASSWORD) as emu:
        yield emu


def newest_downloadable(emulator):
    records = sorted(emulator.records(), key=lambda r: (r['storageDate'], r['id']), reverse=True)
    return next(r for r in records if r['canDownload'])


def private_data_dir(tmp_path, emulator, dest, export_password):
    """A private data dir as AWX writes it for a job on playbooks/backup.yml."""
    root = tmp_path / 'job'
    (root / 'project' / 'playbooks').mkdir(parents=True)
    shutil.copy(os.path.join(support.ROOT, 'playbooks', 'backup.yml'),
                str(root / 'project' / 'playbooks' / 'backup.yml'))
    (root / 'inventory').mkdir()
    (root / 'inventory' / 'hosts').write_text(
        'localhost ansible_connection=local ansible_python_interpreter=%s\n'
        % support.MANAGED_PYTHON)

    credential_env, credential_vars = render_injectors(load_credential_type(), {
        'base_url': emulator.url,
        'username': support.USER['username'],
        'password': support.USER['password'],
        'domain': '',
        'token': '',
        'export_password': export_password,
    })
    envvars = dict(credential_env)
    envvars.update({
        'ANSIBLE_COLLECTIONS_PATH': support.COLLECTIONS,
        'ANSIBLE_LOCAL_TEMP': str(tmp_path / 'ansible-local'),
        'ANSIBLE_REMOTE_TEMP': str(tmp_path / 'ansible-remote'),
        'ANSIBLE_NOCOLOR': '1',
        'NO_PROXY': '127.0.0.1,localhost',
        'no_proxy': '127.0.0.1,localhost',
    })
    extravars = dict(credential_vars)
    # What the job template itself sets as its extra variables.
    extravars.update({'backup_exports_dest': str(dest), 'backup_exports_keep': 3})
    (root / 'env').mkdir(mode=0o700)
    (root / 'env' / 'envvars').write_text(yaml.safe_dump(envvars, default_flow_style=False))
    (root / 'env' / 'extravars').write_text(dump_extra_vars(extravars))
    return root


def secrets_of(emulator, export_password):
    issued = emulator.state()['tokens_issued']
    assert issued, 'the emulator issued no access token: the job did not sign in'
    return [support.USER['password']] + ([export_password] if export_password else []) + issued


def leaks(text, secrets):
    return [secret[:4] + '...' for secret in secrets if secret in text]


@pytest.mark.parametrize('verbosity', [0, 3])
def test_awx_job_stores_the_archive_and_shows_no_secret(
        emulator, export_password, tmp_path, monkeypatch, verbosity):
    for name in list(os.environ):
        if name.startswith('TSS_'):
            monkeypatch.delenv(name)
    monkeypatch.setenv('PATH', support.BIN_DIR + os.pathsep + os.environ.get('PATH', ''))
    dest = tmp_path / 'backups'
    newest = newest_downloadable(emulator)
    root = private_data_dir(tmp_path, emulator, dest, export_password)

    runner = ansible_runner.run(private_data_dir=str(root), playbook='playbooks/backup.yml',
                                process_isolation=False, verbosity=verbosity, quiet=True,
                                ident='job')

    stdout = runner.stdout.read()
    assert (runner.status, runner.rc) == ('successful', 0), stdout[-4000:]
    archive = dest / (newest['filename'] + '.zip')
    assert archive.read_bytes() == emulator.archive_bytes(newest['id'])
    assert stat.S_IMODE(os.stat(str(archive)).st_mode) == 0o600

    events = list(runner.events)
    reports = [event['event_data']['res']['ansible_facts']['backup_exports_result']
               for event in events if event['event'] == 'runner_on_ok'
               and event['event_data'].get('task')
               == 'Record what the run did in backup_exports_result']
    assert len(reports) == 1
    if export_password:
        # It reached the module through TSS_EXPORT_PASSWORD: the archive was opened.
        assert reports[0]['contents']['secrets'] > 0
    else:
        # Blank counts as unset: no restore proof was attempted.
        assert reports[0]['contents'] is None

    secrets = secrets_of(emulator, export_password)
    for event in events:
        assert not leaks(json.dumps(event), secrets), (event['event'], event.get('uuid'))
    artifacts = runner.config.artifact_dir
    with open(os.path.join(artifacts, 'stdout')) as handle:
        assert not leaks(handle.read(), secrets)
    event_files = glob.glob(os.path.join(artifacts, 'job_events', '*.json'))
    assert len(event_files) == len(events)
    for path in event_files:
        with open(path) as handle:
            assert not leaks(handle.read(), secrets), os.path.basename(path)
