"""The fault matrix: secretserver_export_fetch run as Ansible runs it, against a faulty server.

Each case lays out tmp_path as a host that has backed up before (dest holding an older archive
and an operator's file, and a directory beside dest), injects faults into the emulator, runs
the module in its own process and then asserts on the result and on every file under
tmp_path: either nothing changed, or exactly the new archive appeared, byte-identical to what
the emulator serves, mode 0600. Every run is also checked for tracebacks and for the password
and every token the emulator issued (check_output).

docs/reliability.md maps each fault to the case that proves it. Backoff waits are real here
(retries stay at 0-2 and most faults send Retry-After: 0); tests/unit/plugins/module_utils/
test_client_faults.py asserts the waits themselves, and tests/soak draws random schedules of
the same faults (a few dozen of them run here, test_random_fault_schedules_keep_the_invariant).
"""

import email.utils
import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings

import support
from soak.fault_schedules import check_schedule, schedules, snapshot
from support import USER, run_module, warnings_of

FETCH = 'secretserver_export_fetch'
DEST = 'backups'
EXPORT_PASSWORD = 'export-password'


# --- helpers ---------------------------------------------------------------------------------

class Host:
    """tmp_path as a host that has backed up before; before is the snapshot of all of it."""

    def __init__(self, emulator, tmp_path, dest_exists=True):
        self.emulator = emulator
        self.root = tmp_path
        self.dest = tmp_path / DEST
        downloadable = [r for r in emulator.records() if r['canDownload']]
        self.record = downloadable[0]  # what select=latest stores
        self.name = self.record['filename'] + '.zip'
        self.served = emulator.archive_bytes(self.record['id'])
        self.older = downloadable[-1]
        elsewhere = tmp_path / 'elsewhere'
        elsewhere.mkdir()
        (elsewhere / 'keep.txt').write_bytes(b'beside dest, never touched\n')
        if dest_exists:
            self.dest.mkdir(mode=0o700)
            older = self.dest / (self.older['filename'] + '.zip')
            older.write_bytes(emulator.archive_bytes(self.older['id']))
            older.chmod(0o600)
            (self.dest / 'notes.txt').write_bytes(b'operator notes\n')
        self.before = snapshot(str(tmp_path))

    @property
    def path(self):
        return str(self.dest / self.name)

    def fetch(self, **args):
        params = dict(USER, base_url=self.emulator.url, dest=str(self.dest), retries=1,
                      timeout=10)
        params.update(args)
        run = run_module(FETCH, params, self.root, timeout=120)
        check_output(self.emulator, run, params)
        return run

    def files(self):
        return snapshot(str(self.root))

    def assert_untouched(self, run):
        assert self.files() == self.before, run

    def assert_stored(self, run):
        expected = dict(self.before)
        expected[os.path.join(DEST, self.name)] = ('file', 0o600, self.served)
        if DEST not in self.before:
            expected[DEST] = ('dir', 0o700, None)
        assert self.files() == expected, run
        assert not run.failed, run
        assert run.result['changed'] and run.result['downloaded']
        assert run.result['size'] == len(self.served)


def check_output(emulator, run, params=None):
    """No traceback and no secret in what the module printed, whatever happened."""
    text = run.stdout + run.stderr
    assert 'Traceback' not in text, run
    secrets = [USER['password'], EXPORT_PASSWORD] + emulator.state()['tokens_issued']
    for name in ('password', 'token', 'export_password'):
        if params and params.get(name):
            secrets.append(params[name])
    for secret in secrets:
        assert secret not in text, 'a password or token appears in the module output'


def counts(emulator):
    return emulator.state()['counts']


def http_date(offset):
    return email.utils.formatdate(time.time() + offset, usegmt=True)


@pytest.fixture
def host(emulator, tmp_path):
    return Host(emulator, tmp_path)


def start_module(args, workdir):
    """The module as a child process we can kill: (Popen, path of its arguments file)."""
    params = dict(args, _ansible_check_mode=False, _ansible_diff=False,
                  _ansible_remote_tmp=str(workdir), _ansible_tmpdir=str(workdir))
    fd, path = tempfile.mkstemp(prefix='args-', suffix='.json', dir=str(workdir))
    with os.fdopen(fd, 'w') as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': params}, handle)
    proc = subprocess.Popen(
        [support.MANAGED_PYTHON, '-m', support.MODULE_PACKAGE + FETCH, path],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=support.module_env(),
        stdin=subprocess.DEVNULL, cwd=str(workdir))
    return proc, path


def finish(proc, path, timeout=120):
    stdout, stderr = proc.communicate(timeout=timeout)
    os.unlink(path)
    return support.ModuleRun(subprocess.CompletedProcess(proc.args, proc.returncode, stdout,
                                                         stderr))


def parts(directory):
    try:
        return sorted(name for name in os.listdir(str(directory)) if '.part-' in name)
    except FileNotFoundError:
        return []


def wait_for_part(directory, size, limit=60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for name in parts(directory):
            try:
                if os.path.getsize(os.path.join(str(directory), name)) >= size:
                    return name
            except FileNotFoundError:
                continue
        time.sleep(0.02)
    raise AssertionError('no temporary file of %d bytes appeared in %s' % (size, directory))


# --- dropped connections -----------------------------------------------------------------------

@pytest.mark.parametrize('cut', ['zero', 'one', 'half', 'last'])
def test_connection_dropped_once_mid_download_is_retried_and_the_archive_is_whole(host, cut):
    at = {'zero': 0, 'one': 1, 'half': len(host.served) // 2, 'last': len(host.served) - 1}
    host.emulator.add_fault('download', 'drop_after', bytes=at[cut])

    run = host.fetch(retries=1)

    host.assert_stored(run)
    assert counts(host.emulator)['download'] == 2


def test_connection_dropped_every_time_fails_after_the_retries_and_keeps_the_old_state(host):
    host.emulator.add_fault('download', 'drop_after', bytes=len(host.served) // 2, times=-1)

    run = host.fetch(retries=2)

    assert run.failed and run.result['error']['kind'] == 'transport'
    assert 'broke off' in run.result['msg'] and '/item/%d' % host.record['id'] in run.result['msg']
    assert counts(host.emulator)['download'] == 3
    host.assert_untouched(run)


def test_forced_download_that_keeps_dropping_leaves_the_present_archive_as_it_was(
        emulator, tmp_path):
    host = Host(emulator, tmp_path, dest_exists=False)
    assert not host.fetch().failed
    host.before = host.files()
    emulator.reset()
    emulator.add_fault('download', 'drop_after', bytes=100, times=-1)

    run = host.fetch(force=True, retries=1)

    assert run.failed
    host.assert_untouched(run)


def test_module_killed_mid_download_leaves_a_part_file_the_next_run_removes(
        emulator, tmp_path):
    # 3 MiB, stalled after 2: the client writes in 1 MiB reads, so the first one is on disk.
    emulator.set_exports(count=3, archive_size=3 << 20)
    host = Host(emulator, tmp_path)
    emulator.add_fault('download', 'stall', bytes=2 << 20, delay=60)
    args = dict(USER, base_url=emulator.url, dest=str(host.dest), retries=0, timeout=90)
    proc, path = start_module(args, host.root)
    try:
        part = wait_for_part(host.dest, 1 << 20)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        os.unlink(path)
    assert proc.returncode == -signal.SIGKILL
    left = host.files()
    assert os.path.join(DEST, part) in left and os.path.join(DEST, host.name) not in left

    # Not taken for an archive: check mode still says the export would be downloaded.
    planned = run_module(FETCH, dict(args, timeout=10), host.root, check_mode=True)
    assert not planned.failed and planned.result['changed'] is True, planned

    run = host.fetch()
    host.assert_stored(run)
    assert parts(host.dest) == []


# --- short, unsized and damaged bodies ---------------------------------------------------------

def test_truncated_body_once_is_retried_and_the_archive_is_whole(host):
    host.emulator.add_fault('download', 'truncate', bytes=len(host.served) // 3)

    run = host.fetch(retries=1)

    host.assert_stored(run)
    assert counts(host.emulator)['download'] == 2


def test_truncated_body_every_time_fails_and_keeps_the_old_state(host):
    host.emulator.add_fault('download', 'truncate', bytes=len(host.served) - 1, times=-1)

    run = host.fetch(retries=1)

    assert run.failed and run.result['error']['kind'] == 'transport'
    host.assert_untouched(run)


def test_chunked_body_without_content_length_is_stored_whole(host):
    host.emulator.add_fault('download', 'chunked')

    run = host.fetch()

    host.assert_stored(run)
    assert counts(host.emulator)['download'] == 1


def test_chunked_body_cut_short_fails_and_stores_nothing(host):
    host.emulator.add_fault('download', 'chunked', bytes=len(host.served) // 2, times=-1)

    run = host.fetch(retries=1)

    assert run.failed and 'broke off' in run.result['msg']
    host.assert_untouched(run)


@pytest.mark.parametrize('kind, words', [
    ('corrupt', 'is not a complete ZIP archive'),
    ('invalid_json', 'is not a complete ZIP archive'),
    ('noxml', 'does not contain the export file'),
])
def test_body_that_is_not_the_export_archive_fails_verification_and_keeps_the_old_state(
        host, kind, words):
    host.emulator.add_fault('download', kind, times=-1)

    run = host.fetch(retries=2)

    assert run.failed and run.result['error']['kind'] == 'archive'
    assert words in run.result['msg'] and '/item/%d' % host.record['id'] in run.result['msg']
    assert counts(host.emulator)['download'] == 1  # the same answer again would not help
    host.assert_untouched(run)


def test_flipped_ciphertext_byte_is_caught_by_the_restore_proof(host):
    host.emulator.add_fault('download', 'flip_byte')

    run = host.fetch(export_password=EXPORT_PASSWORD)

    assert run.failed and 'damaged' in run.result['msg']
    host.assert_untouched(run)


# --- busy answers and other errors -------------------------------------------------------------

@pytest.mark.parametrize('retry_after', [None, '0', 'past-date', 'near-date'])
@pytest.mark.parametrize('code', [429, 502, 503, 504])
def test_busy_download_answer_is_waited_out_within_the_retries(host, code, retry_after):
    params = {}
    if retry_after == 'past-date':
        params['retry_after'] = http_date(-60)
    elif retry_after == 'near-date':
        params['retry_after'] = http_date(1)
    elif retry_after is not None:
        params['retry_after'] = retry_after
    host.emulator.add_fault('download', 'status', code=code, **params)

    run = host.fetch(retries=1)

    host.assert_stored(run)
    assert counts(host.emulator)['download'] == 2


@pytest.mark.parametrize('route', ['token', 'list'])
def test_busy_sign_in_and_list_answers_are_waited_out(host, route):
    host.emulator.add_fault(route, 'status', code=503, retry_after='0', times=2)

    run = host.fetch(retries=2)

    host.assert_stored(run)
    assert counts(host.emulator)[route] == 3


@pytest.mark.parametrize('route', ['token', 'list', 'download'])
def test_server_busy_every_time_fails_after_exactly_retries_plus_one_requests(host, route):
    host.emulator.add_fault(route, 'status', code=503, retry_after='0', times=-1)

    run = host.fetch(retries=2)

    assert run.failed and run.result['error']['kind'] == 'transport'
    assert 'busy or unavailable' in run.result['msg'] and 'HTTP 503' in run.result['msg']
    assert counts(host.emulator)[route] == 3
    host.assert_untouched(run)


@pytest.mark.parametrize('code', [400, 403, 404, 405, 409, 410, 422, 500])
@pytest.mark.parametrize('route', ['list', 'download'])
def test_other_error_answers_fail_at_once_without_retrying(host, route, code):
    host.emulator.add_fault(route, 'status', code=code, times=-1)

    run = host.fetch(retries=3)

    assert run.failed and 'HTTP %d' % code in run.result['msg']
    assert counts(host.emulator)[route] == 1
    host.assert_untouched(run)


# --- tokens ------------------------------------------------------------------------------------

def test_token_expired_between_list_and_download_is_renewed_once(host):
    host.emulator.add_fault('download', 'expire_tokens')

    run = host.fetch()

    host.assert_stored(run)
    state = counts(host.emulator)
    assert state['refresh'] == 1 and state['token'] == 1 and state['download'] == 2


def test_second_401_is_an_authentication_failure_with_a_clear_message(host):
    host.emulator.add_fault('download', 'status', code=401, times=2)

    run = host.fetch()

    assert run.failed and run.result['error']['kind'] == 'authentication'
    assert 'refused the access token' in run.result['msg']
    assert 'renewing it did not help' in run.result['msg']
    host.assert_untouched(run)


def test_expired_given_token_asks_for_a_fresh_one(host):
    answer = run_module('secretserver_export_info', dict(USER, base_url=host.emulator.url),
                        host.root)
    assert not answer.failed, answer
    token = host.emulator.state()['tokens_issued'][0]
    host.emulator.add_fault('list', 'expire_tokens')

    run = host.fetch(username=None, password=None, token=token)

    assert run.failed and 'cannot be renewed' in run.result['msg']
    host.assert_untouched(run)


# --- slow and silent servers -------------------------------------------------------------------

def test_stalled_download_fails_within_the_timeout_instead_of_hanging(host):
    host.emulator.add_fault('download', 'stall', bytes=len(host.served) // 2, delay=120)

    # run_module gives up after 60 s: a hanging module fails this test with TimeoutExpired.
    run = run_module(FETCH, dict(USER, base_url=host.emulator.url, dest=str(host.dest),
                                 retries=0, timeout=1), host.root, timeout=60)

    check_output(host.emulator, run)
    assert run.failed and 'timed out' in run.result['msg']
    host.assert_untouched(run)


def test_stalled_download_is_retried_and_stored(host):
    host.emulator.add_fault('download', 'stall', bytes=100, delay=60)

    run = host.fetch(retries=1, timeout=1)

    host.assert_stored(run)


@pytest.mark.parametrize('route', ['token', 'list', 'download'])
def test_server_silent_before_its_headers_times_out(host, route):
    host.emulator.add_fault(route, 'slow', delay=60, times=-1)

    run = host.fetch(retries=0, timeout=1)

    assert run.failed and 'timed out' in run.result['msg']
    host.assert_untouched(run)


def test_server_that_never_accepts_the_connection_times_out(host):
    listener = socket.socket()
    fillers = []
    try:
        listener.bind(('127.0.0.1', 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for dummy in range(4):  # a full accept queue: further SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(('127.0.0.1', port))
            fillers.append(filler)
        run = host.fetch(base_url='http://127.0.0.1:%d' % port, retries=0, timeout=1)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()

    assert run.failed and 'timed out' in run.result['msg']
    host.assert_untouched(run)


# --- answers of the wrong shape ----------------------------------------------------------------

@pytest.mark.parametrize('route, kind, words', [
    ('token', 'html200', 'HTML page'),
    ('token', 'invalid_json', 'not valid JSON'),
    ('list', 'html200', 'HTML page'),
    ('list', 'invalid_json', 'not valid JSON'),
    ('list', 'no_records', 'no records list'),
    ('list', 'bad_records', 'not a whole number'),
    ('download', 'html200', 'HTML page'),
])
def test_answer_of_the_wrong_shape_fails_clearly_naming_the_url(host, route, kind, words):
    host.emulator.add_fault(route, kind, times=-1)

    run = host.fetch(retries=2)

    assert run.failed and run.result['error']['kind'] == 'protocol'
    assert words in run.result['msg']
    assert '(URL: %s/' % host.emulator.url in run.result['msg']
    assert counts(host.emulator)[route] == 1
    host.assert_untouched(run)


def record(export_id=4242, filename='secret-server-export-20240101000000', **changes):
    raw = {'id': export_id, 'autoExportConfigurationId': 1,
           'storageDate': '2024-01-01T00:00:02.123', 'filename': filename, 'canDownload': True}
    raw.update(changes)
    return raw


@pytest.mark.parametrize('changes, words', [
    ({'filename': None}, 'filename None is not a string'),
    ({'filename': 17}, 'filename 17 is not a string'),
    ({'canDownload': 'yes'}, "canDownload 'yes' is not true or false"),
    ({'storageDate': 'yesterday'}, "storageDate 'yesterday' is not a date"),
    ({'autoExportConfigurationId': 'one'}, "autoExportConfigurationId 'one'"),
], ids=['no-filename', 'int-filename', 'string-bool', 'bad-date', 'string-config'])
def test_records_missing_fields_or_of_wrong_types_fail_naming_the_export(
        emulator, tmp_path, changes, words):
    host = Host(emulator, tmp_path)
    emulator.set_records([record(**changes)])

    run = host.fetch()

    assert run.failed and 'export 4242' in run.result['msg'] and words in run.result['msg']
    assert '(URL: %s/' % emulator.url in run.result['msg']
    host.assert_untouched(run)


# --- hostile values from the server ------------------------------------------------------------

HOSTILE_NAMES = {
    'slash': '../../elsewhere/keep',
    'backslash': '..\\..\\elsewhere\\keep',
    'dotdot': '..',
    'leading-dot': '.bashrc',
    'nul': 'secret-server-export\x00.sh',
    'newline': 'secret-server-export\nFAKE LOG LINE',
    'escape': 'secret-server-export\x1b[2J',
    'bidi': 'secret-server-export-\u202egpj',
    'absolute': '/etc/cron.d/backdoor',
    'too-long': 'secret-server-export-' + 'x' * 240,
    'empty': '',
}


@pytest.mark.parametrize('name', sorted(HOSTILE_NAMES))
def test_hostile_file_name_writes_nothing_anywhere_and_names_the_export(
        emulator, tmp_path, name):
    host = Host(emulator, tmp_path)
    emulator.set_records([record(filename=HOSTILE_NAMES[name])])

    run = host.fetch()

    assert run.failed and run.result['error']['kind'] == 'archive'
    assert 'Export 4242 has the file name' in run.result['msg']
    assert 'nothing was written' in run.result['msg']
    assert counts(emulator)['download'] == 0
    host.assert_untouched(run)


@pytest.mark.parametrize('bad_id', ['12', '../../etc', 1.5, -3, True, None, [1]],
                         ids=['digits', 'path', 'float', 'negative', 'bool', 'null', 'list'])
def test_export_id_that_is_not_a_whole_number_fails_naming_it(emulator, tmp_path, bad_id):
    host = Host(emulator, tmp_path)
    emulator.set_records([record(export_id=bad_id)])

    run = host.fetch()

    assert run.failed and 'id is not a whole number: %r' % (bad_id,) in run.result['msg']
    assert counts(emulator)['download'] == 0
    host.assert_untouched(run)


def test_hostile_name_among_good_exports_stores_the_good_ones_and_names_the_bad_one(
        emulator, tmp_path):
    host = Host(emulator, tmp_path)
    good = [record(export_id=7001, filename='secret-server-export-20240103000000',
                   storageDate='2024-01-03T00:00:02'),
            record(export_id=7002, filename='secret-server-export-20240102000000',
                   storageDate='2024-01-02T00:00:02')]
    emulator.set_records(good + [record(export_id=7003, filename='../outside')])

    run = host.fetch(select='all')

    assert run.failed and 'Export 7003' in run.result['msg']
    expected = dict(host.before)
    for raw in good:
        expected[os.path.join(DEST, raw['filename'] + '.zip')] = (
            'file', 0o600, emulator.archive_bytes(raw['id']))
    assert host.files() == expected
    assert [a['export']['id'] for a in run.result['archives']] == [7001, 7002]


@pytest.mark.parametrize('kind', ['symlink', 'directory'])
def test_archive_name_taken_by_a_link_or_directory_is_refused_and_left_alone(host, kind):
    target = host.root / 'elsewhere' / 'keep.txt'
    if kind == 'symlink':
        os.symlink(str(target), host.path)
    else:
        os.mkdir(host.path)
    host.before = host.files()

    for force in (False, True):
        run = host.fetch(force=force)

        assert run.failed and 'is not a regular file' in run.result['msg']
        host.assert_untouched(run)
    assert counts(host.emulator)['download'] == 0


# --- hostile or mistaken playbook input --------------------------------------------------------

def test_dest_that_is_a_file_fails_clearly_and_writes_nothing(emulator, tmp_path):
    host = Host(emulator, tmp_path, dest_exists=False)
    host.dest.write_bytes(b'a file where dest should be\n')
    host.before = host.files()

    run = host.fetch()

    assert run.failed and 'exists but is not a directory' in run.result['msg']
    host.assert_untouched(run)


def test_dest_symlink_to_another_directory_is_refused_and_the_target_untouched(
        emulator, tmp_path):
    host = Host(emulator, tmp_path, dest_exists=False)
    os.symlink(str(tmp_path / 'elsewhere'), str(host.dest))
    host.before = host.files()

    run = host.fetch()

    assert run.failed and 'is a symbolic link' in run.result['msg']
    host.assert_untouched(run)


def test_dest_below_a_file_fails_clearly_and_writes_nothing(emulator, tmp_path):
    host = Host(emulator, tmp_path, dest_exists=False)
    run = host.fetch(dest=str(tmp_path / 'elsewhere' / 'keep.txt' / 'backups'))

    assert run.failed and 'A parent of it is a file' in run.result['msg']
    host.assert_untouched(run)


def test_dest_not_writable_fails_clearly_and_writes_nothing(host):
    if os.geteuid() == 0:
        pytest.skip('root writes into a 0500 directory anyway, and no other user can run the '
                    'managed Python here; dest below a file covers the refusal as root')
    host.dest.chmod(0o500)
    host.before = host.files()
    try:
        run = host.fetch()
    finally:
        host.dest.chmod(0o700)

    assert run.failed and 'not readable and writable' in run.result['msg']
    assert host.files() == dict(host.before, **{DEST: ('dir', 0o700, None)})


def test_relative_dest_is_refused(host):
    run = host.fetch(dest='backups')

    assert run.failed and 'dest must be an absolute path' in run.result['msg']
    host.assert_untouched(run)


def test_base_url_without_scheme_fails_before_any_request(host):
    run = host.fetch(base_url=host.emulator.url.split('://', 1)[1])

    assert run.failed and 'is not an http(s) URL' in run.result['msg']
    assert sum(counts(host.emulator).values()) == 0
    host.assert_untouched(run)


@pytest.mark.parametrize('suffix', ['/api/v1', '/api/v1/', '/'])
def test_base_url_with_the_api_path_or_a_slash_works(host, suffix):
    run = host.fetch(base_url=host.emulator.url + suffix)

    host.assert_stored(run)
    paths = [r['path'] for r in host.emulator.state()['requests']]
    assert not any('/api/v1/api/v1' in p or '//' in p for p in paths)


def test_export_id_not_in_storage_fails_clearly_and_writes_nothing(host):
    run = host.fetch(export_id=987654)

    assert run.failed and 'export 987654 is not in the storage list' in run.result['msg']
    assert counts(host.emulator)['download'] == 0
    host.assert_untouched(run)


@pytest.mark.parametrize('option, value, words', [
    ('owner', 'no-such-user-here', "owner 'no-such-user-here' is not a user"),
    ('group', 'no-such-group-here', "group 'no-such-group-here' is not a group"),
    ('mode', 'rw-everyone', "mode 'rw-everyone' is neither octal nor symbolic"),
])
def test_wrong_owner_group_or_mode_fails_before_anything_is_stored(host, option, value, words):
    # These failed only after the archive had its name: a failed run with the archive stored.
    run = host.fetch(**{option: value})

    assert run.failed
    host.assert_untouched(run)
    assert words in run.result['msg']
    assert counts(host.emulator)['download'] == 0


# --- TLS ---------------------------------------------------------------------------------------

@pytest.fixture
def tls_host(tmp_path):
    with support.Emulator(tls=True) as emu:
        yield Host(emu, tmp_path)


def test_tls_default_verification_fails_naming_ca_path(tls_host):
    run = tls_host.fetch()

    assert run.failed and run.result['error']['kind'] == 'tls'
    assert 'ca_path' in run.result['msg']
    tls_host.assert_untouched(run)


def test_tls_with_ca_path_passes(tls_host):
    run = tls_host.fetch(ca_path=tls_host.emulator.ca_file)

    tls_host.assert_stored(run)


def test_tls_without_validation_passes_with_a_warning(tls_host):
    run = tls_host.fetch(validate_certs=False)

    tls_host.assert_stored(run)
    assert any('validate_certs is false' in w for w in warnings_of(run.result))


# --- secrets in output -------------------------------------------------------------------------

PLAYBOOK = '''
- name: Back up the exports the way a nightly job does
  hosts: localhost
  gather_facts: false
  module_defaults:
    group/secretserver.backup.secretserver:
      base_url: "{{ ss_base_url }}"
      username: "{{ ss_username | default(omit) }}"
      password: "{{ ss_password | default(omit) }}"
      token: "{{ ss_token | default(omit) }}"
      retries: 0
      timeout: 10
  tasks:
    - name: List the exports
      secretserver.backup.secretserver_export_info:
      register: listed
      ignore_errors: true

    - name: Store the newest
      secretserver.backup.secretserver_export_fetch:
        dest: "{{ ss_dest }}"
        export_password: "{{ ss_export_password }}"
      register: fetched
      ignore_errors: true

    - name: Show what the tasks returned
      ansible.builtin.debug:
        var: fetched
'''


@pytest.mark.parametrize('scenario, expected', [
    ('success', 'downloaded secret-server-export-'),
    ('given-token', 'downloaded secret-server-export-'),
    ('wrong-password', 'refused the password grant'),
    ('forbidden', 'lacks a permission'),
    ('html-page', 'HTML page'),
    ('dropped-download', 'broke off'),
])
def test_no_password_or_token_in_playbook_output_at_vvv(emulator, tmp_path, scenario, expected):
    playbook = tmp_path / 'nightly.yml'
    playbook.write_text(PLAYBOOK)
    extra = {'ss_base_url': emulator.url, 'ss_dest': str(tmp_path / DEST),
             'ss_export_password': EXPORT_PASSWORD, 'ss_username': USER['username'],
             'ss_password': USER['password']}
    secrets = [USER['password'], EXPORT_PASSWORD]
    if scenario == 'given-token':
        answer = run_module('secretserver_export_info', dict(USER, base_url=emulator.url),
                            tmp_path)
        assert not answer.failed, answer
        extra.pop('ss_username')
        extra.pop('ss_password')
        extra['ss_token'] = emulator.state()['tokens_issued'][0]
    elif scenario == 'wrong-password':
        extra['ss_password'] = 'Wrong-Pa55word-4-test'
        secrets.append(extra['ss_password'])
    elif scenario == 'forbidden':
        emulator.add_fault('list', 'status', code=403, times=-1,
                           body={'errorCode': 'API_AccessDenied', 'message': 'Access Denied'})
    elif scenario == 'html-page':
        emulator.add_fault('list', 'html200', times=-1)
    elif scenario == 'dropped-download':
        emulator.add_fault('download', 'drop_after', bytes=100, times=-1)

    run = support.run_playbook(str(playbook), tmp_path, extra_vars=extra, verbosity=3)

    assert expected in run.output, run.output[-3000:]
    assert run.recap()['failed'] == 0  # ignore_errors: every task ran
    for secret in secrets + emulator.state()['tokens_issued']:
        assert secret not in run.output, 'a secret appears in the -vvv output of ' + scenario


# --- permissions -------------------------------------------------------------------------------

@pytest.mark.parametrize('umask', [0o000, 0o022, 0o077])
def test_archive_is_0600_and_created_dest_0700_whatever_the_umask(emulator, tmp_path, umask):
    host = Host(emulator, tmp_path, dest_exists=False)
    old = os.umask(umask)
    try:
        run = host.fetch()
    finally:
        os.umask(old)

    host.assert_stored(run)


def test_owner_and_group_are_applied_to_new_and_present_archives(host):
    if os.geteuid() != 0:
        pytest.skip('giving a file to another user needs root')
    import grp
    import pwd
    nobody, nogroup = pwd.getpwnam('nobody'), grp.getgrgid(pwd.getpwnam('nobody').pw_gid)

    run = host.fetch(owner='nobody', group=nogroup.gr_name)
    assert not run.failed, run
    info = os.stat(host.path)
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nogroup.gr_gid)
    assert stat.S_IMODE(info.st_mode) == 0o600

    os.chown(host.path, 0, 0)
    again = host.fetch(owner='nobody', group=nogroup.gr_name)
    assert not again.failed and again.result['changed'] and not again.result['downloaded']
    assert os.stat(host.path).st_uid == nobody.pw_uid


def test_temporary_file_is_never_readable_by_others_during_a_slow_download(emulator, tmp_path):
    host = Host(emulator, tmp_path, dest_exists=False)
    emulator.add_fault('download', 'stall', bytes=len(host.served) // 2, delay=1.5)
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            for kind, path in [('part', host.dest / name) for name in parts(host.dest)] + \
                    [('dest', host.dest)]:
                try:
                    seen.append((kind, stat.S_IMODE(os.lstat(str(path)).st_mode)))
                except FileNotFoundError:
                    pass

    watcher = threading.Thread(target=watch)
    old = os.umask(0)
    watcher.start()
    try:
        run = host.fetch()
    finally:
        stop.set()
        watcher.join()
        os.umask(old)

    host.assert_stored(run)
    part_modes = [mode for kind, mode in seen if kind == 'part']
    dest_modes = {mode for kind, mode in seen if kind == 'dest'}
    assert part_modes, 'the watcher never saw the temporary file'
    assert all(mode & 0o077 == 0 for mode in part_modes), sorted(set(part_modes))
    assert dest_modes == {0o700}


# --- concurrency -------------------------------------------------------------------------------

def test_two_runs_at_once_end_with_one_archive_and_the_loser_says_already_present(host):
    host.emulator.add_fault('download', 'stall', bytes=len(host.served) // 2, delay=1.5,
                            times=2)
    args = dict(USER, base_url=host.emulator.url, dest=str(host.dest), retries=0, timeout=30)
    started = [start_module(args, host.root) for dummy in range(2)]
    runs = [finish(proc, path) for proc, path in started]

    for run in runs:
        check_output(host.emulator, run)
        assert not run.failed, run
    expected = dict(host.before)
    expected[os.path.join(DEST, host.name)] = ('file', 0o600, host.served)
    assert host.files() == expected
    messages = sorted(run.result['msg'] for run in runs)
    assert [run.result['changed'] for run in runs].count(True) == 1, messages
    assert messages[0].startswith('downloaded ') or messages[1].startswith('downloaded ')
    assert any('already present' in message for message in messages), messages


# --- random schedules (the soak's invariant, a few dozen schedules) ----------------------------

@pytest.fixture(scope='module')
def schedule_emulator():
    with support.Emulator() as emu:
        emu.set_exports(count=4)
        yield emu


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules())
def test_random_fault_schedules_keep_the_invariant(schedule_emulator, schedule):
    check_schedule(schedule_emulator, schedule, schedule_emulator.records())
