"""What the unit and integration tests share: import paths, the emulator, running modules and
playbooks the way Ansible does.

Importing this module makes ``ansible_collections.secretserver.backup`` importable from the
working tree (through a symlink under .tmp/collections) and the emulator importable as
``server``.
"""

import json
import os
import re
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
COLLECTIONS = os.environ.get('SSB_COLLECTIONS_PATH') or os.path.join(ROOT, '.tmp', 'collections')
EMULATOR_DIR = os.path.join(TESTS, 'emulator')


def _link_collection():
    """The collection as Ansible finds it: .tmp/collections/ansible_collections/secretserver/backup."""
    namespace = os.path.join(COLLECTIONS, 'ansible_collections', 'secretserver')
    link = os.path.join(namespace, 'backup')
    if os.path.exists(link):
        return
    os.makedirs(namespace, exist_ok=True)
    try:
        os.symlink(ROOT, link)
    except FileExistsError:
        pass


if 'SSB_COLLECTIONS_PATH' not in os.environ:
    _link_collection()
for path in (COLLECTIONS, EMULATOR_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)

from server import Emulator  # noqa: E402  (the path above makes it importable)

__all__ = ['Emulator', 'ModuleRun', 'PlaybookRun', 'run_module', 'run_playbook', 'files_in',
           'warnings_of', 'module_env', 'Sink', 'USER', 'ROOT', 'COLLECTIONS', 'MODULE_PACKAGE']

MODULE_PACKAGE = 'ansible_collections.secretserver.backup.plugins.modules.'
BIN_DIR = os.environ.get('SSB_ANSIBLE_BIN_DIR') or os.path.dirname(sys.executable)
MANAGED_PYTHON = os.environ.get('SSB_MANAGED_PYTHON') or sys.executable

USER = {'username': 'backup', 'password': 'backup-password'}


class ModuleRun:
    """One module execution: its return code, parsed result and raw output."""

    def __init__(self, completed):
        self.rc = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr
        self.result = _last_json(completed.stdout)

    @property
    def failed(self):
        return bool(self.result.get('failed')) or self.rc != 0

    def __repr__(self):
        return 'ModuleRun(rc=%r, result=%r, stderr=%r)' % (self.rc, self.result, self.stderr[-2000:])


def _last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith('{'):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def module_env(extra=None):
    env = dict(os.environ)
    for name in list(env):
        if name.startswith('TSS_'):
            del env[name]
    env['PYTHONPATH'] = COLLECTIONS
    if MANAGED_PYTHON == sys.executable:
        # The modules import ansible.module_utils, as AnsiballZ provides it; under ansible-test
        # units ansible itself is on the harness's path only, not in its site-packages.
        import ansible
        env['PYTHONPATH'] += os.pathsep + os.path.dirname(os.path.dirname(ansible.__file__))
    env.update(extra or {})
    return env


def run_module(name, args, tmp_path, env=None, check_mode=False, diff=False, python=None,
               timeout=120):
    """Run a module of the collection as Ansible would on the managed host, without Ansible."""
    params = dict(args)
    params['_ansible_check_mode'] = check_mode
    params['_ansible_diff'] = diff
    params['_ansible_remote_tmp'] = str(tmp_path)
    params['_ansible_tmpdir'] = str(tmp_path)
    args_file = os.path.join(str(tmp_path), 'args-%s.json' % name)
    with open(args_file, 'w') as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': params}, handle)
    completed = subprocess.run(
        [python or MANAGED_PYTHON, '-m', MODULE_PACKAGE + name, args_file],
        capture_output=True, text=True, env=module_env(env), timeout=timeout,
        stdin=subprocess.DEVNULL, cwd=str(tmp_path), check=False)
    os.unlink(args_file)
    return ModuleRun(completed)


class PlaybookRun:
    def __init__(self, completed):
        self.rc = completed.returncode
        self.output = completed.stdout + completed.stderr

    def recap(self, host='localhost'):
        match = re.search(r'^%s\s*:\s*(.*)$' % re.escape(host), self.output, re.M)
        assert match, 'no PLAY RECAP for %s in:\n%s' % (host, self.output[-3000:])
        return dict((k, int(v)) for k, v in re.findall(r'(\w+)=(\d+)', match.group(1)))


def run_playbook(playbook, tmp_path, extra_vars=None, env=None, inventory='localhost,',
                 check=False, verbosity=0, extra_args=(), timeout=600):
    """ansible-playbook against local connections, with the collection from the working tree."""
    vars_file = os.path.join(str(tmp_path), 'extra-vars.json')
    with open(vars_file, 'w') as handle:
        json.dump(extra_vars or {}, handle)
    command = [os.path.join(BIN_DIR, 'ansible-playbook'), '-i', inventory, '-c', 'local',
               '-e', '@' + vars_file, playbook]
    if check:
        command.append('--check')
    if verbosity:
        command.append('-' + 'v' * verbosity)
    command.extend(extra_args)
    full_env = module_env({
        'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS,
        'ANSIBLE_PYTHON_INTERPRETER': MANAGED_PYTHON,
        'ANSIBLE_LOCAL_TEMP': os.path.join(str(tmp_path), 'ansible-local'),
        'ANSIBLE_REMOTE_TEMP': os.path.join(str(tmp_path), 'ansible-remote'),
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_FORCE_COLOR': '0',
        'ANSIBLE_RETRY_FILES_ENABLED': '0',
        'ANSIBLE_HOST_KEY_CHECKING': '0',
        'ANSIBLE_DEPRECATION_WARNINGS': '0',
    })
    full_env.pop('PYTHONPATH', None)
    full_env.update(env or {})
    completed = subprocess.run(command, capture_output=True, text=True, env=full_env,
                               timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(tmp_path),
                               check=False)
    return PlaybookRun(completed)


class Sink:
    """A download writer (write, reset, size) that keeps the bytes in memory."""

    def __init__(self):
        self.data = bytearray()

    @property
    def size(self):
        return len(self.data)

    def write(self, chunk):
        self.data += chunk

    def reset(self):
        self.data = bytearray()


def files_in(directory):
    """Every entry of a directory, hidden ones included, as {name: bytes or 'DIR'}."""
    found = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            found[name] = 'DIR'
        else:
            with open(path, 'rb') as handle:
                found[name] = handle.read()
    return found


def warnings_of(result):
    """Warning texts of a module result, whatever shape this ansible-core gives them."""
    texts = []
    for warning in result.get('warnings', []):
        if isinstance(warning, dict):
            warning = (warning.get('event') or {}).get('msg') or warning.get('msg') or ''
        texts.append(warning)
    return texts
