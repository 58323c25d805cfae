"""The collection tarball: what `ansible-galaxy collection build` puts in it, and that the
installed copy runs the nightly backup on its own.

The tarball must hold the collection and nothing of the developer's tree (virtual environment,
build and test state, the emulator and test tools, benchmark output, older tarballs). Installed
with `ansible-galaxy collection install` into an empty directory, the playbook
secretserver.backup.backup must back up the emulator with only that directory on the
collections path.
"""

import os
import re
import shutil
import stat
import subprocess
import tarfile

import pytest
import yaml

import support

GALAXY = os.path.join(support.BIN_DIR, 'ansible-galaxy')

# Shipped on purpose: the README and the docs point operators at each of these.
REQUIRED = [
    'MANIFEST.json', 'FILES.json', 'README.md', 'requirements.txt', 'bindep.txt',
    'meta/runtime.yml', 'meta/execution-environment.yml', 'extensions/awx/credential_type.yml',
    'playbooks/backup.yml', 'playbooks/verify.yml', 'roles/backup_exports/meta/argument_specs.yml',
    'plugins/module_utils/client.py', 'plugins/modules/secretserver_export_fetch.py',
    'docs/guide.md', 'docs/awx.md',
]
DEBRIS_NAMES = {'.venv', '.tmp', '.git', '__pycache__', '.pytest_cache', '.hypothesis',
                '.mypy_cache', '.ruff_cache', '.ansible', 'bench-results'}
DEBRIS_DIRS = ('tests/emulator/', 'tests/unit/emulator/', 'tests/tools/', 'tests/bench/',
               'tests/soak/', 'tests/output/')
DEBRIS_SUFFIXES = ('.tar.gz', '.pyc', '.zip')


def version():
    with open(os.path.join(support.ROOT, 'galaxy.yml')) as handle:
        return yaml.safe_load(handle)['version']


def build(source, output):
    completed = subprocess.run(
        [GALAXY, 'collection', 'build', '--force', '--output-path', str(output), str(source)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    tarball = os.path.join(str(output), 'secretserver-backup-%s.tar.gz' % version())
    assert os.path.isfile(tarball), os.listdir(str(output))
    return tarball


def members(tarball):
    with tarfile.open(tarball) as archive:
        return [member.name[2:] if member.name.startswith('./') else member.name
                for member in archive.getmembers()]


def debris(names):
    found = []
    for name in names:
        parts = name.rstrip('/').split('/')
        if (DEBRIS_NAMES.intersection(parts) or (name.rstrip('/') + '/').startswith(DEBRIS_DIRS)
                or name.endswith(DEBRIS_SUFFIXES)):
            found.append(name)
    return found


@pytest.fixture(scope='module')
def tarball(tmp_path_factory):
    """The tarball built from the checkout, as `make build` builds it."""
    return build(support.ROOT, tmp_path_factory.mktemp('dist'))


def test_tarball_holds_what_operators_need(tarball):
    names = set(members(tarball))
    assert not [path for path in REQUIRED if path not in names], sorted(names)


def test_tarball_from_the_checkout_holds_no_development_debris(tarball):
    assert debris(members(tarball)) == []


def dirty_copy(tmp_path, plant):
    """The checkout (without its large state) plus debris files at the given paths."""
    source = tmp_path / 'checkout'
    shutil.copytree(support.ROOT, str(source), symlinks=True, ignore=shutil.ignore_patterns(
        '.venv', '.tmp', '.git', '__pycache__', '.pytest_cache', '.hypothesis', '*.tar.gz'))
    for path in plant:
        target = source / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b'debris\n')
    return source


# Where the development tools write their state and output, from the top of the checkout or
# (pytest and Hypothesis caches) from a subdirectory.
TOOL_DEBRIS = [
    '.venv/bin/python', '.tmp/collections/marker', '.git/HEAD', '.pytest_cache/v/cache/lastfailed',
    '.hypothesis/examples/ab/cd', 'plugins/modules/__pycache__/x.cpython-311.pyc',
    'plugins/module_utils/client.pyc', 'tests/bench/results/run.json', 'bench-results/run.json',
    'tests/output/junit.xml', 'secretserver-backup-0.9.0.tar.gz', 'docs/old.tar.gz',
    'tests/soak/.hypothesis/x', 'tests/unit/.pytest_cache/v/cache/nodeids',
    'tests/.hypothesis/examples/ab/cd', 'tests/integration/.mypy_cache/x', 'tests/.ruff_cache/x',
]


def test_build_of_a_tree_full_of_tool_state_leaves_all_of_it_out(tmp_path):
    source = dirty_copy(tmp_path, TOOL_DEBRIS)

    names = members(build(source, tmp_path / 'dist'))

    assert debris(names) == []
    assert 'plugins/modules/secretserver_export_fetch.py' in names


def test_installed_tarball_runs_the_backup_playbook_on_its_own(tarball, emulator, tmp_path):
    install_dir = tmp_path / 'installed'
    install_dir.mkdir()
    # Only the empty directory is a collections path: a copy of the checkout found on
    # PYTHONPATH or sys.path would make ansible-galaxy skip the install as already done.
    isolated = {'ANSIBLE_COLLECTIONS_PATH': str(install_dir),
                'ANSIBLE_COLLECTIONS_SCAN_SYS_PATH': '0'}
    env = dict(os.environ, **isolated)
    env.pop('PYTHONPATH', None)
    completed = subprocess.run(
        [GALAXY, 'collection', 'install', '--offline', tarball, '-p', str(install_dir)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300, env=env,
        check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    installed = install_dir / 'ansible_collections' / 'secretserver' / 'backup'
    assert (installed / 'MANIFEST.json').is_file()
    assert not (installed / 'tests' / 'emulator').exists()

    records = sorted(emulator.records(), key=lambda r: (r['storageDate'], r['id']), reverse=True)
    newest = next(r for r in records if r['canDownload'])
    dest = tmp_path / 'backups'
    run = support.run_playbook(
        'secretserver.backup.backup', tmp_path, verbosity=2,
        extra_vars={'backup_exports_base_url': emulator.url,
                    'backup_exports_username': support.USER['username'],
                    'backup_exports_password': support.USER['password'],
                    'backup_exports_dest': str(dest)},
        env=isolated)

    assert run.rc == 0, run.output[-4000:]
    assert run.recap()['failed'] == 0
    # Every task came from the installed copy, none from the checkout.
    task_paths = re.findall(r'^task path: (\S+):\d+$', run.output, re.M)
    assert task_paths
    assert all(path.startswith(str(installed) + os.sep) for path in task_paths), task_paths
    archive = dest / (newest['filename'] + '.zip')
    assert archive.read_bytes() == emulator.archive_bytes(newest['id'])
    assert stat.S_IMODE(os.stat(str(archive)).st_mode) == 0o600
    assert (dest / 'SHA256SUMS').is_file()
