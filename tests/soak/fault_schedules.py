"""Randomized fault schedules for secretserver_export_fetch, and the invariant each run keeps.

A schedule is what a dest looked like before (absent, empty, holding other files, the archive
already there, a damaged copy of it, a temporary file left by a killed run) and one to three
module runs, each with its own options (retries, force, export_password, which export) and
up to three emulator faults (which request, which fault, how many times). After every run:

* nothing outside dest changed, and dest holds exactly its previous files, or those plus the
  new archive byte-identical to what the emulator serves; nothing else, nothing partial (a
  temporary file left by a killed run may stay only until a run reaches dest);
* the result agrees with the files: failed => no new or replaced archive; changed => the
  archive is there; success => the archive is there, whole, and no temporary file is left;
* no password or token the emulator issued appears in the module's output, and the module
  never raises (a traceback would end the run outside fail_json);
* listing and downloading make at most retries + 1 requests each, plus one per token renewal.

Every schedule ends with a run without faults, which must store the archive: a fault never
leaves dest in a state that stops the next night's backup.

The module runs in this process (run_in_process) with the backoff waits recorded instead of
slept, so a thousand schedules take minutes; the subprocess runs of tests/integration cover
the real waits. TALLY counts schedules drawn and held for the soak summary.
"""

import contextlib
import io
import json
import os
import stat
import tempfile

from hypothesis import strategies as st

import support  # noqa: F401  (makes the collection and the emulator importable)
from ansible.module_utils import basic as ansible_basic
from ansible_collections.secretserver.backup.plugins.module_utils import client as client_mod
from ansible_collections.secretserver.backup.plugins.modules import (
    secretserver_export_fetch as fetch_module,
)

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core before 2.19 reads the module args from basic._ANSIBLE_ARGS
    patch_module_args = None

TALLY = {'drawn': 0, 'held': 0}

DEST = 'dest'
SIBLING = 'sibling'
PASSWORD = support.USER['password']
EXPORT_PASSWORD = 'export-password'
# Short enough that a stall of LONG_DELAY times out, long enough for loopback under load.
TIMEOUT = 0.5
LONG_DELAY = 0.8
SHORT_DELAY = 0.05

KINDS = {
    'download': ('drop_after', 'truncate', 'chunked', 'chunked_cut', 'corrupt', 'noxml',
                 'flip_byte', 'status', 'expire_tokens', 'stall', 'slow', 'html200',
                 'invalid_json'),
    'list': ('drop_after', 'truncate', 'chunked', 'corrupt', 'status', 'expire_tokens', 'stall',
             'slow', 'html200', 'invalid_json', 'no_records', 'bad_records'),
    'token': ('drop_after', 'truncate', 'chunked', 'corrupt', 'status', 'slow', 'html200',
              'invalid_json'),
}
STATUS_CODES = (429, 502, 503, 504, 400, 401, 403, 404, 500)
RETRY_AFTER = (None, '0', '3600', 'Thu, 01 Jan 1970 00:00:00 GMT', 'soon')
CUTS = ('zero', 'one', 'half', 'almost')


# --- drawing -------------------------------------------------------------------------------

@st.composite
def faults(draw, with_password):
    on = draw(st.sampled_from(sorted(KINDS)))
    kinds = [k for k in KINDS[on] if with_password or k != 'flip_byte']
    # Status answers have the most branches (retry or not, Retry-After, renewal): drawn more.
    kinds += ['status', 'status']
    fault = {'on': on, 'kind': draw(st.sampled_from(kinds)),
             'times': draw(st.sampled_from((1, 2, -1)))}
    kind = fault['kind']
    if kind in ('drop_after', 'truncate', 'chunked_cut', 'stall'):
        fault['cut'] = draw(st.sampled_from(CUTS))
    if kind in ('stall', 'slow'):
        fault['delay'] = draw(st.sampled_from((SHORT_DELAY, SHORT_DELAY, SHORT_DELAY,
                                               LONG_DELAY)))
    if kind == 'status':
        fault['code'] = draw(st.sampled_from(STATUS_CODES))
        fault['retry_after'] = draw(st.sampled_from(RETRY_AFTER))
    return fault


@st.composite
def runs(draw):
    with_password = draw(st.booleans())
    return {
        'retries': draw(st.integers(min_value=0, max_value=3)),
        'force': draw(st.booleans()),
        'export_password': with_password,
        # flip_byte is only drawn with export_password: without it, nothing can tell a
        # flipped ciphertext byte apart (docs/reliability.md, "what is still weak").
        'faults': draw(st.lists(faults(with_password), max_size=3)),
    }


@st.composite
def schedules(draw):
    before = draw(st.sampled_from(('absent', 'existing')))
    contents = set()
    if before == 'existing':
        contents = set(draw(st.sets(st.sampled_from(('others', 'archive', 'damaged',
                                                     'stale_part')))))
        if {'archive', 'damaged'} <= contents:
            contents.discard(draw(st.sampled_from(('archive', 'damaged'))))
    return {
        'dest': before,
        'contents': sorted(contents),
        'target': draw(st.sampled_from(('latest', 'older'))),
        'runs': draw(st.lists(runs(), min_size=1, max_size=3)),
    }


# --- running -------------------------------------------------------------------------------

class ModuleRaised(AssertionError):
    """The module ended with an exception instead of exit_json or fail_json."""


@contextlib.contextmanager
def _module_args(args):
    if patch_module_args is not None:
        with patch_module_args(args):
            yield
        return
    saved = getattr(ansible_basic, '_ANSIBLE_ARGS', None)
    ansible_basic._ANSIBLE_ARGS = json.dumps({'ANSIBLE_MODULE_ARGS': args}).encode()
    try:
        yield
    finally:
        ansible_basic._ANSIBLE_ARGS = saved


def _clear_global_warnings():
    # Warnings live in module-level collections of ansible-core; a second run in the same
    # process would otherwise repeat the first run's warnings.
    from ansible.module_utils.common import warnings as ansible_warnings
    for name in ('_global_warnings', '_global_deprecations'):
        collected = getattr(ansible_warnings, name, None)
        if collected is not None:
            collected.clear()


@contextlib.contextmanager
def recorded_backoff():
    """Replace the client's backoff waits by 0 s, recording what it asked for."""
    asked = []
    original = client_mod.backoff_delay

    def record(attempt, retry_after=None):
        asked.append(original(attempt, retry_after))
        return 0

    client_mod.backoff_delay = record
    try:
        yield asked
    finally:
        client_mod.backoff_delay = original


def run_in_process(args):
    """Run secretserver_export_fetch here; return (result, the module's raw output)."""
    params = dict(args, _ansible_check_mode=False, _ansible_diff=False)
    out = io.StringIO()
    _clear_global_warnings()
    try:
        with _module_args(params), contextlib.redirect_stdout(out):
            fetch_module.main()
    except SystemExit:
        pass
    except Exception as exc:  # a traceback in a real run: exactly what must not happen
        raise ModuleRaised('the module raised %r; output so far: %s' % (exc, out.getvalue()))
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.startswith('{')]
    if not lines:
        raise ModuleRaised('the module printed no result: %r' % text[-2000:])
    return json.loads(lines[-1]), text


# --- files ---------------------------------------------------------------------------------

def snapshot(root):
    """{relative path: (kind, mode, bytes or link target)} for everything under root."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ('link', None, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ('dir', stat.S_IMODE(info.st_mode), None)
            else:
                with open(path, 'rb') as handle:
                    found[rel] = ('file', stat.S_IMODE(info.st_mode), handle.read())
    return found


def is_part(rel):
    return '.part-' in os.path.basename(rel)


def _write(path, data, mode=0o600):
    with open(path, 'wb') as handle:
        handle.write(data)
    os.chmod(path, mode)


def lay_out(root, schedule, name, served, other_name, other_bytes):
    """Build dest (and a sibling directory that must never change) as the schedule says."""
    sibling = os.path.join(root, SIBLING)
    os.mkdir(sibling)
    _write(os.path.join(sibling, 'keep.txt'), b'outside dest\n', 0o644)
    _write(os.path.join(sibling, name), b'an archive name outside dest\n')
    if schedule['dest'] == 'absent':
        return
    dest = os.path.join(root, DEST)
    os.mkdir(dest, 0o700)
    contents = schedule['contents']
    if 'others' in contents:
        _write(os.path.join(dest, other_name), other_bytes)
        _write(os.path.join(dest, 'notes.txt'), b'operator notes\n', 0o644)
        os.mkdir(os.path.join(dest, 'old'))
    if 'archive' in contents:
        _write(os.path.join(dest, name), served)
    if 'damaged' in contents:
        _write(os.path.join(dest, name), b'PK\x03\x04 not really a zip')
    if 'stale_part' in contents:
        # What a run killed mid-download leaves: a hidden, unlocked, partial file.
        _write(os.path.join(dest, '.%s.part-%s' % (name, '0123456789abcdef')),
               served[:len(served) // 2])


# --- faults ----------------------------------------------------------------------------------

def _cut(cut, size):
    return {'zero': 0, 'one': 1, 'half': size // 2, 'almost': max(size - 1, 0)}[cut]


def emulator_faults(run, served_size):
    """The schedule's faults as the emulator takes them (byte cuts made concrete)."""
    made = []
    for fault in run['faults']:
        size = served_size if fault['on'] == 'download' else 60
        params = {'on': fault['on'], 'times': fault['times']}
        kind = fault['kind']
        params['kind'] = 'chunked' if kind == 'chunked_cut' else kind
        if 'cut' in fault:
            params['bytes'] = _cut(fault['cut'], size)
        if 'delay' in fault:
            params['delay'] = fault['delay']
        if kind == 'status':
            params['code'] = fault['code']
            if fault['retry_after'] is not None:
                params['retry_after'] = fault['retry_after']
        made.append(params)
    return made


# --- the invariant -----------------------------------------------------------------------------

def check_run(root, name, served, before, after, result, output, secrets, counts, run, asked):
    """Assert the invariant of one run; messages say which part broke."""
    rel = os.path.join(DEST, name)
    failed = bool(result.get('failed'))
    outside_before = {k: v for k, v in before.items() if not k.startswith(DEST)}
    outside_after = {k: v for k, v in after.items() if not k.startswith(DEST)}
    assert outside_after == outside_before, 'something outside dest changed'

    new = set(after) - set(before)
    gone = set(before) - set(after)
    replaced = {k for k in set(after) & set(before) if after[k] != before[k]}
    assert all(is_part(k) for k in gone), 'files vanished from dest: %s' % sorted(gone)
    assert not any(is_part(k) for k in new), 'a temporary file stayed: %s' % sorted(new)
    expected_new = {rel}
    if DEST not in before:
        expected_new.add(DEST)
    assert new <= expected_new, 'unexpected files in dest: %s' % sorted(new - expected_new)
    assert replaced <= {rel}, 'files changed in dest: %s' % sorted(replaced - {rel})
    if DEST in new:
        assert after[DEST][:2] == ('dir', 0o700), 'dest was created as %r' % (after[DEST][:2],)

    stored = after.get(rel)
    if rel in new or rel in replaced:
        assert stored == ('file', 0o600, served), 'the archive in dest is not the served one'
        assert not failed, 'the run failed but left a new archive: %s' % result.get('msg')
    if result.get('changed'):
        assert stored is not None and stored[2] == served, 'changed but no archive'
    if not failed:
        assert stored is not None and stored[2] == served, 'success without the whole archive'
        assert not any(is_part(k) for k in after), 'a temporary file survived a success'
    else:
        assert isinstance(result.get('msg'), str) and result['msg'], 'failure without a message'

    for secret in secrets:
        assert secret not in output, 'a password or token appears in the module output'
    # Each request beyond the first is a retry or the repeat after a token renewal, and
    # every renewal shows as a sign-in beyond the first one.
    renewals = max(0, counts['token'] + counts['refresh'] - 1)
    for route in ('list', 'download'):
        assert counts[route] <= run['retries'] + 1 + renewals, \
            '%d %s requests with retries %d and %d renewals' % (
                counts[route], route, run['retries'], renewals)
    assert all(0 <= wait <= client_mod.MAX_RETRY_WAIT for wait in asked), \
        'backoff asked for %r' % asked


def check_schedule(emu, schedule, records):
    """Lay out dest, run the schedule and a final clean run, checking the invariant each time."""
    TALLY['drawn'] += 1
    downloadable = [r for r in records if r['canDownload']]
    target = downloadable[0] if schedule['target'] == 'latest' else downloadable[-1]
    other = downloadable[1]
    name = target['filename'] + '.zip'
    served = emu.archive_bytes(target['id'])
    with tempfile.TemporaryDirectory(prefix='soak-') as root:
        lay_out(root, schedule, name, served, other['filename'] + '.zip',
                emu.archive_bytes(other['id']))
        clean = {'retries': 1, 'force': False, 'export_password': False, 'faults': []}
        for index, run in enumerate(schedule['runs'] + [clean]):
            emu.reset()
            emu.add_faults(*emulator_faults(run, len(served)))
            args = dict(support.USER, base_url=emu.url, dest=os.path.join(root, DEST),
                        retries=run['retries'], force=run['force'],
                        timeout=TIMEOUT if run['faults'] else 10)
            if schedule['target'] == 'older':
                args['export_id'] = target['id']
            if run['export_password']:
                args['export_password'] = EXPORT_PASSWORD
            before = snapshot(root)
            with recorded_backoff() as asked:
                result, output = run_in_process(args)
            state = emu.state()
            check_run(root, name, served, before, snapshot(root), result, output,
                      [PASSWORD, EXPORT_PASSWORD] + state['tokens_issued'], state['counts'],
                      run, asked)
            if run is clean:
                assert not result.get('failed'), \
                    'a run without faults failed after the schedule: %s' % result.get('msg')
    TALLY['held'] += 1
