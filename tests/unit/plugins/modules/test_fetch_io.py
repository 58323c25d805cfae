"""The mechanisms behind the download numbers: one pass over the bytes, no re-reading.

The module runs in a child process that reports its own /proc/self/io at exit: rchar counts
bytes read from files (socket reads do not go through read(2) here), so it shows whether the
archive was read back after it was written, or read at all when it was already present.
"""

import hashlib
import json
import os
import subprocess

import pytest

import support

SIZE = 24 * 1024 * 1024
LAUNCHER = (
    "import atexit, runpy, sys\n"
    "def report():\n"
    "    with open('/proc/self/io') as f:\n"
    "        sys.stderr.write('IO ' + f.read().replace('\\n', ' ') + '\\n')\n"
    "atexit.register(report)\n"
    "sys.argv = ['module', sys.argv[1]]\n"
    "runpy.run_module(%r, run_name='__main__')\n")

pytestmark = pytest.mark.skipif(not os.path.exists('/proc/self/io'), reason='needs Linux /proc')


def run_counting(module, args, tmp_path):
    args_file = tmp_path / 'args.json'
    args_file.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': args}))
    code = LAUNCHER % (support.MODULE_PACKAGE + module)
    done = subprocess.run([support.MANAGED_PYTHON, '-c', code, str(args_file)],
                          capture_output=True, text=True, env=support.module_env(),
                          stdin=subprocess.DEVNULL, timeout=300, check=False)
    io_line = [line for line in done.stderr.splitlines() if line.startswith('IO ')][-1]
    words = io_line[3:].split()
    fields = dict(zip(words[0::2], words[1::2]))
    return support._last_json(done.stdout), int(fields['rchar:'])


@pytest.fixture
def big_emulator():
    with support.Emulator(archive_size=SIZE, exports=2) as emu:
        yield emu


def test_download_is_one_pass_the_archive_is_never_read_back(big_emulator, tmp_path):
    dest = tmp_path / 'dest'
    args = dict(support.USER, base_url=big_emulator.url, dest=str(dest))

    result, rchar = run_counting('secretserver_export_fetch', args, tmp_path)

    assert result['downloaded'] and result['size'] >= SIZE
    served = big_emulator.archive_bytes(result['export']['id'])
    assert result['sha256'] == hashlib.sha256(served).hexdigest()
    # Python, ansible-core and requests read a few MiB of their own files at start-up.
    assert rchar < SIZE / 3, 'the module read %d bytes from files' % rchar


def test_present_archive_is_not_read_whole_and_its_hash_comes_from_the_manifest(
        big_emulator, tmp_path):
    dest = tmp_path / 'dest'
    args = dict(support.USER, base_url=big_emulator.url, dest=str(dest))
    first, dummy = run_counting('secretserver_export_fetch', args, tmp_path)
    name = os.path.basename(first['dest'])
    (dest / 'SHA256SUMS').write_text('%s  %s\n' % ('ab' * 32, name))
    big_emulator.reset()

    again, rchar = run_counting('secretserver_export_fetch', args, tmp_path)

    assert again['changed'] is False and again['downloaded'] is False
    assert big_emulator.state()['counts']['download'] == 0
    # The manifest's (deliberately wrong) hash proves the archive was not hashed again.
    assert again['sha256'] == 'ab' * 32
    assert rchar < SIZE / 3, 'the module read %d bytes from files' % rchar
