# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Unit tests for the archive layer, on real files in temporary directories.

The AES archives are built with pyzipper the way Secret Server builds its exports (WinZip AES
256, one XML member), so the restore proof is exercised end to end.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import threading
import tracemalloc
import unicodedata
import zipfile

import tempfile

import pytest

try:
    from hypothesis import given, settings, strategies
except ImportError:  # only the property tests need it
    given = None

from ansible_collections.secretserver.backup.plugins.module_utils import archive
from ansible_collections.secretserver.backup.plugins.module_utils.errors import ArchiveError

pyzipper = pytest.importorskip('pyzipper')

PASSWORD = 'correct horse battery staple'
STEM = 'secret-server-export-20240501120000'
MEMBER = STEM + archive.XML_SUFFIX

EXPORT_XML = b"""<?xml version="1.0" encoding="utf-8"?>
<ImportFile>
  <Folders>
    <Folder><FolderName>Ops</FolderName><FolderPath>\\Ops</FolderPath></Folder>
    <Folder><FolderName>Db</FolderName><FolderPath>\\Ops\\Db</FolderPath></Folder>
  </Folders>
  <Secrets>
    <Secret>
      <SecretName>prod db</SecretName>
      <SecretTemplateName>Password</SecretTemplateName>
      <Folder>\\Ops\\Db</Folder>
      <SecretItems>
        <SecretItem><FieldName>Username</FieldName><Value>sa</Value></SecretItem>
        <SecretItem><FieldName>Password</FieldName><Value>hunter2</Value></SecretItem>
      </SecretItems>
    </Secret>
    <Secret>
      <SecretName>router</SecretName>
      <SecretTemplateName>Password</SecretTemplateName>
      <SecretItems>
        <SecretItem><FieldName>Password</FieldName><Value>s3cr3t</Value></SecretItem>
      </SecretItems>
    </Secret>
    <Secret>
      <SecretName>api</SecretName>
      <SecretItems/>
    </Secret>
  </Secrets>
</ImportFile>
"""


def build_export(path, xml=EXPORT_XML, member=MEMBER, password=PASSWORD,
                 compression=zipfile.ZIP_DEFLATED):
    with pyzipper.AESZipFile(str(path), 'w', compression=compression,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(password.encode('utf-8'))
        zf.setencryption(pyzipper.WZ_AES, nbits=256)
        zf.writestr(member, xml)
    return str(path)


def zip_layout(path):
    """(ciphertext start, ciphertext end, central directory offset) of a one-member archive."""
    with open(path, 'rb') as handle:
        raw = handle.read()
    name_len, extra_len = struct.unpack('<2H', raw[26:30])
    cd_offset = struct.unpack('<L', raw[-6:-2])[0]
    salt_and_verifier = 16 + 2
    return 30 + name_len + extra_len + salt_and_verifier, cd_offset - 10, cd_offset


def flip_byte(path, offset):
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0x01]))


@pytest.fixture
def dest(tmp_path):
    path = tmp_path / 'dest'
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    os.umask(previous)

    def set_umask(value):
        os.umask(value)
    yield set_umask
    os.umask(previous)


def touch(directory, name, data=b'data'):
    path = os.path.join(directory, name)
    with open(path, 'wb') as handle:
        handle.write(data)
    return path


def part_files(directory):
    return [name for name in os.listdir(directory) if archive._PART_RE.match(name)]


def child_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(entry for entry in sys.path if entry)
    return env


# --- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', [STEM, 'export 2024', 'é' * 125, 'x' * 251, 'a.b-c_d'])
def test_validate_filename_accepts_plain_names(name):
    assert archive.validate_filename(name, 42) == name


@pytest.mark.parametrize('name', [
    '/', '\\', '..', '.', '.hidden', 'a\x00b', 'a\nb', '/abs', 'x' * 252, '\u2028',
    'a/b', 'a\\b', '', 'a\x7fb', 'a\x85b', 'a\u202eb', 'a\u2029b', 'é' * 126, 'a\udcffb',
    None, b'bytes', 7,
])
def test_validate_filename_refuses_hostile_names(name):
    with pytest.raises(ArchiveError) as caught:
        archive.validate_filename(name, 'exp-17')
    text = str(caught.value)
    assert 'exp-17' in text
    assert 'nothing was written' in text
    assert repr(name)[:40] in text


if given is not None:
    @given(strategies.text())
    def test_validate_filename_accepts_only_names_that_stay_in_dest(name):
        try:
            result = archive.validate_filename(name, 1)
        except ArchiveError:
            return
        assert result == name
        assert os.path.dirname(os.path.join('/dest', name)) == '/dest'
        assert os.path.normpath(os.path.join('/dest', name)) == os.path.join('/dest', name)
        assert not name.startswith('.')
        assert len(archive.archive_name(name).encode('utf-8')) <= 255
        assert not any(unicodedata.category(char) in ('Cc', 'Cf', 'Cs', 'Zl', 'Zp')
                       for char in name)


def test_validate_filename_truncates_the_value_shown():
    with pytest.raises(ArchiveError) as caught:
        archive.validate_filename('/' * 5000, 1)
    assert len(str(caught.value)) < 400
    assert "'////" in str(caught.value)


def test_archive_name_and_is_archive_name():
    assert archive.archive_name(STEM) == STEM + '.zip'
    assert archive.is_archive_name(archive.archive_name(STEM))
    for name in ['notes.zip', STEM, STEM + '.zip.bak', '.' + STEM + '.zip',
                 'secret-server-export-\n.zip', archive.MANIFEST_NAME, None,
                 'secret-server-export-' + 'x' * 231 + '.zip']:
        assert not archive.is_archive_name(name), name


def test_archive_sort_key_orders_newest_first():
    names = ['secret-server-export-20230101000000.zip', 'secret-server-export-undated.zip',
             'secret-server-export-20240501120000123.zip', 'secret-server-export-20240501.zip',
             'secret-server-export-20240501120000.zip']
    assert sorted(names, key=archive.archive_sort_key, reverse=True) == [
        'secret-server-export-20240501120000123.zip',
        'secret-server-export-20240501120000.zip',
        'secret-server-export-20240501.zip',
        'secret-server-export-20230101000000.zip',
        'secret-server-export-undated.zip',
    ]


# --- destination ------------------------------------------------------------------------------

def test_prepare_dest_refuses_relative_path():
    with pytest.raises(ArchiveError, match='not an absolute path'):
        archive.prepare_dest('backups/here')


@pytest.mark.parametrize('mask', [0, 0o022, 0o077])
def test_prepare_dest_creates_owner_only_dirs(tmp_path, umask, mask):
    umask(mask)
    os.chmod(str(tmp_path), 0o755)
    target = str(tmp_path / 'a' / 'b' / 'c')
    assert archive.prepare_dest(target) is True
    for path in (tmp_path / 'a', tmp_path / 'a' / 'b', tmp_path / 'a' / 'b' / 'c'):
        assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(str(tmp_path)).st_mode) == 0o755
    assert archive.prepare_dest(target) is False


def test_prepare_dest_leaves_existing_dir_mode(dest):
    os.chmod(dest, 0o750)
    assert archive.prepare_dest(dest) is False
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o750


def test_prepare_dest_refuses_symlink(tmp_path, dest):
    link = str(tmp_path / 'link')
    os.symlink(dest, link)
    with pytest.raises(ArchiveError) as caught:
        archive.prepare_dest(link)
    assert 'symbolic link to %s' % dest in str(caught.value)
    assert 'real directory' in str(caught.value)


def test_prepare_dest_refuses_file(tmp_path):
    path = touch(str(tmp_path), 'file')
    with pytest.raises(ArchiveError, match='not a directory'):
        archive.prepare_dest(path)


def test_prepare_dest_refuses_file_in_the_path(tmp_path):
    path = touch(str(tmp_path), 'file')
    with pytest.raises(ArchiveError, match='Could not'):
        archive.prepare_dest(os.path.join(path, 'below'))


def test_prepare_dest_refuses_unwritable_dir(dest, monkeypatch):
    monkeypatch.setattr(archive.os, 'access', lambda path, mode: False)
    with pytest.raises(ArchiveError, match='not readable and writable'):
        archive.prepare_dest(dest)


# --- writer -----------------------------------------------------------------------------------

def test_writer_temp_file_is_owner_only_and_locked_from_creation(dest, umask):
    umask(0)
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        info = os.stat(writer.path)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_size == 0
        name = os.path.basename(writer.path)
        assert re.match(r'\A\.a\.zip\.part-[0-9a-f]{16}\Z', name)
        probe = os.open(writer.path, os.O_RDONLY)
        try:
            assert archive._try_lock(probe) is False
        finally:
            os.close(probe)


def test_writer_writes_hashes_and_publishes(dest):
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'hello ')
        writer.write(memoryview(b'world'))
        temp = writer.path
        assert writer.size == 11
        assert writer.sha256 == hashlib.sha256(b'hello world').hexdigest()
        assert writer.commit() is True
    assert not os.path.exists(temp)
    with open(os.path.join(dest, 'a.zip'), 'rb') as handle:
        assert handle.read() == b'hello world'
    assert os.listdir(dest) == ['a.zip']


def test_writer_handles_partial_writes(dest, monkeypatch):
    real_write = os.write

    def short_write(fd, data):
        return real_write(fd, bytes(data[:3]))
    monkeypatch.setattr(archive.os, 'write', short_write)
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'0123456789' * 3)
        writer.commit()
    monkeypatch.undo()
    with open(os.path.join(dest, 'a.zip'), 'rb') as handle:
        assert handle.read() == b'0123456789' * 3


def test_writer_reports_full_disk(dest, monkeypatch):
    def no_space(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        monkeypatch.setattr(archive.os, 'write', no_space)
        with pytest.raises(ArchiveError) as caught:
            writer.write(b'data')
        monkeypatch.undo()
    assert 'No space left' in str(caught.value)
    assert 'free space' in str(caught.value)
    assert os.listdir(dest) == []


def test_writer_reset_restarts_file_and_hash(dest):
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'broken download' * 100)
        writer.reset()
        writer.write(b'good')
        assert writer.size == 4
        assert writer.sha256 == hashlib.sha256(b'good').hexdigest()
        writer.commit()
    with open(os.path.join(dest, 'a.zip'), 'rb') as handle:
        assert handle.read() == b'good'


def test_writer_set_attributes_before_publishing(dest):
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'x')
        writer.set_attributes(mode=0o640, uid=os.getuid(), gid=os.getgid())
        assert stat.S_IMODE(os.stat(writer.path).st_mode) == 0o640
        writer.commit()
    info = os.stat(os.path.join(dest, 'a.zip'))
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())


def test_writer_set_attributes_failure_names_the_file(dest, monkeypatch):
    def refuse(fd, uid, gid):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
    monkeypatch.setattr(archive.os, 'fchown', refuse)
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        with pytest.raises(ArchiveError, match='Could not set owner 12, group -1'):
            writer.set_attributes(uid=12)


def test_writer_does_not_replace_existing_archive(dest):
    touch(dest, 'a.zip', b'first run')
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'second run')
        assert writer.commit() is False
    with open(os.path.join(dest, 'a.zip'), 'rb') as handle:
        assert handle.read() == b'first run'
    assert os.listdir(dest) == ['a.zip']


def test_writer_replaces_when_asked(dest):
    touch(dest, 'a.zip', b'old')
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'new')
        assert writer.commit(replace=True) is True
    with open(os.path.join(dest, 'a.zip'), 'rb') as handle:
        assert handle.read() == b'new'
    assert os.listdir(dest) == ['a.zip']


def test_two_writers_racing_to_commit(dest):
    payloads = [b'A' * 100000, b'B' * 100000]
    results = [None, None]
    barrier = threading.Barrier(2)

    def run(index):
        with archive.ArchiveWriter(dest, 'a.zip') as writer:
            writer.write(payloads[index])
            barrier.wait()
            results[index] = writer.commit()
    threads = [threading.Thread(target=run, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [False, True]
    with open(os.path.join(dest, 'a.zip'), 'rb') as handle:
        assert handle.read() == payloads[results.index(True)]
    assert os.listdir(dest) == ['a.zip']


@pytest.mark.parametrize('code', [errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV])
def test_writer_without_hard_links_still_refuses_to_replace(dest, monkeypatch, code):
    def no_link(source, target):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(archive.os, 'link', no_link)
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'one')
        assert writer.commit() is True
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'two')
        assert writer.commit() is False
    monkeypatch.undo()
    with open(os.path.join(dest, 'a.zip'), 'rb') as handle:
        assert handle.read() == b'one'
    assert os.listdir(dest) == ['a.zip']


def test_writer_exception_leaves_no_temp(dest):
    with pytest.raises(ValueError, match='download broke'):
        with archive.ArchiveWriter(dest, 'a.zip') as writer:
            writer.write(b'half')
            raise ValueError('download broke')
    assert os.listdir(dest) == []


def test_writer_cleanup_failure_does_not_mask_the_error(dest, monkeypatch):
    def refuse(path):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    with pytest.raises(ValueError, match='original'):
        with archive.ArchiveWriter(dest, 'a.zip'):
            monkeypatch.setattr(archive.os, 'unlink', refuse)
            raise ValueError('original')


def test_writer_cleanup_failure_without_error_is_reported(dest, monkeypatch):
    def refuse(path):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    with pytest.raises(ArchiveError, match='Could not remove the temporary file'):
        with archive.ArchiveWriter(dest, 'a.zip'):
            monkeypatch.setattr(archive.os, 'unlink', refuse)


def test_writer_without_commit_leaves_nothing(dest):
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'abandoned')
    assert os.listdir(dest) == []
    assert writer.path is not None


def test_writer_refuses_use_after_commit(dest):
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.commit()
        with pytest.raises(ArchiveError, match='not open'):
            writer.write(b'late')
        with pytest.raises(ArchiveError, match='not open'):
            writer.commit()


@pytest.mark.parametrize('name', ['../a.zip', '.a.zip', '', 'a/b'])
def test_writer_refuses_unsafe_names(dest, name):
    with pytest.raises(ArchiveError, match='Cannot store'):
        archive.ArchiveWriter(dest, name)


def test_writer_temp_name_fits_long_names(dest):
    name = 'é' * 125 + '.zip'
    with archive.ArchiveWriter(dest, name) as writer:
        assert len(os.path.basename(writer.path).encode('utf-8')) <= 255
        writer.write(b'x')
        assert writer.commit() is True
    assert os.listdir(dest) == [name]


def test_writer_missing_dest(tmp_path):
    with pytest.raises(ArchiveError, match='Could not create a temporary file'):
        with archive.ArchiveWriter(str(tmp_path / 'missing'), 'a.zip'):
            pass


def test_writer_retries_when_cleanup_steals_the_new_temp(dest, monkeypatch):
    results = iter([False, True])
    real_try_lock = archive._try_lock
    monkeypatch.setattr(archive, '_try_lock', lambda fd: next(results) and real_try_lock(fd))
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        writer.write(b'x')
        writer.commit()
    assert 'a.zip' in os.listdir(dest)


# --- stale parts ------------------------------------------------------------------------------

WRITER_SCRIPT = """
import sys
from ansible_collections.secretserver.backup.plugins.module_utils.archive import ArchiveWriter
with ArchiveWriter(sys.argv[1], sys.argv[2]) as writer:
    writer.write(b'partial')
    print(writer.path, flush=True)
    sys.stdin.read()
"""


def start_writer(dest, name):
    proc = subprocess.Popen([sys.executable, '-c', WRITER_SCRIPT, dest, name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env())
    path = proc.stdout.readline().decode('utf-8').strip()
    assert path, 'the writer subprocess did not start'
    return proc, path


def test_cleanup_removes_killed_writer_part_only(dest):
    killed, killed_path = start_writer(dest, 'killed.zip')
    killed.kill()
    killed.wait(10)
    live, live_path = start_writer(dest, 'live.zip')
    try:
        assert os.path.exists(killed_path)
        removed = archive.cleanup_stale_parts(dest)
        assert removed == [os.path.basename(killed_path)]
        assert not os.path.exists(killed_path)
        assert os.path.exists(live_path)
    finally:
        live.communicate(b'', timeout=10)
    assert not os.path.exists(live_path)


def test_cleanup_spares_live_writer_of_this_process(dest):
    with archive.ArchiveWriter(dest, 'a.zip') as writer:
        assert archive.cleanup_stale_parts(dest) == []
        assert os.path.exists(writer.path)


def test_cleanup_touches_nothing_else(dest, tmp_path):
    outside = touch(str(tmp_path), 'outside')
    stale = '.a.zip.part-0123456789abcdef'
    touch(dest, stale)
    os.symlink(outside, os.path.join(dest, '.b.zip.part-0123456789abcdef'))
    os.mkdir(os.path.join(dest, '.c.zip.part-0123456789abcdef'))
    os.mkfifo(os.path.join(dest, '.d.zip.part-0123456789abcdef'))
    for name in ['a.zip', '.a.zip.part-xyz', 'a.zip.part-0123456789abcdef', '.hidden']:
        touch(dest, name)
    before = set(os.listdir(dest))
    assert archive.cleanup_stale_parts(dest) == [stale]
    assert set(os.listdir(dest)) == before - {stale}
    assert os.path.exists(outside)


def test_cleanup_missing_dest(tmp_path):
    with pytest.raises(ArchiveError, match='Could not list the destination'):
        archive.cleanup_stale_parts(str(tmp_path / 'missing'))


# --- verify_zip -------------------------------------------------------------------------------

def test_verify_zip_reports_aes_member(tmp_path):
    path = build_export(tmp_path / 'a.zip')
    assert archive.verify_zip(path, MEMBER) == {
        'entries': 1, 'encrypted': True, 'member_size': len(EXPORT_XML)}


def test_verify_zip_plain_member(tmp_path):
    path = str(tmp_path / 'plain.zip')
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr(MEMBER, EXPORT_XML)
        zf.writestr('other.txt', b'x')
    assert archive.verify_zip(path, MEMBER) == {
        'entries': 2, 'encrypted': False, 'member_size': len(EXPORT_XML)}


def test_verify_zip_not_a_zip(tmp_path):
    path = touch(str(tmp_path), 'a.zip', b'<html>Session expired</html>')
    with pytest.raises(ArchiveError) as caught:
        archive.verify_zip(path, MEMBER)
    assert 'a.zip is not a complete ZIP archive' in str(caught.value)
    assert 'not an export archive' in str(caught.value)


def test_verify_zip_truncated_anywhere(tmp_path):
    path = build_export(tmp_path / 'a.zip')
    with open(path, 'rb') as handle:
        raw = handle.read()
    cut = str(tmp_path / 'cut.zip')
    for size in range(0, len(raw)):
        with open(cut, 'wb') as handle:
            handle.write(raw[:size])
        with pytest.raises(ArchiveError, match='not a complete ZIP archive'):
            archive.verify_zip(cut, MEMBER)


if given is not None:
    @settings(max_examples=300, deadline=None)
    @given(strategies.binary(max_size=400), strategies.integers(0, 10000))
    def test_verify_zip_fails_only_with_archive_error(garbage, position):
        with tempfile.TemporaryDirectory() as scratch:
            path = build_export(os.path.join(scratch, 'a.zip'))
            with open(path, 'rb') as handle:
                raw = handle.read()
            position %= len(raw)
            for candidate in (garbage, raw[:position] + garbage + raw[position + len(garbage):]):
                with open(path, 'wb') as handle:
                    handle.write(candidate)
                try:
                    result = archive.verify_zip(path, MEMBER)
                except ArchiveError:
                    continue
                assert set(result) == {'entries', 'encrypted', 'member_size'}


def test_verify_zip_member_missing(tmp_path):
    path = build_export(tmp_path / 'a.zip', member='other.xml')
    with pytest.raises(ArchiveError) as caught:
        archive.verify_zip(path, MEMBER)
    assert "does not contain the export file '%s'" % MEMBER in str(caught.value)
    assert "'other.xml'" in str(caught.value)


def test_verify_zip_missing_file(tmp_path):
    with pytest.raises(ArchiveError, match='Could not read'):
        archive.verify_zip(str(tmp_path / 'nothing.zip'), MEMBER)


def test_verify_zip_shows_archive_name_for_temp_file(tmp_path):
    path = touch(str(tmp_path), '.a.zip.part-0123456789abcdef', b'junk')
    with pytest.raises(ArchiveError, match=r'\Aa\.zip is not'):
        archive.verify_zip(path, MEMBER)


class CountingFile(io.FileIO):
    bytes_read = 0

    def read(self, size=-1):
        data = super(CountingFile, self).read(size)
        CountingFile.bytes_read += len(data)
        return data


def test_verify_zip_reads_no_entry_data(tmp_path, monkeypatch):
    xml = b'<ImportFile>' + os.urandom(4 * 1024 * 1024).hex().encode() + b'</ImportFile>'
    path = build_export(tmp_path / 'big.zip', xml=xml, compression=zipfile.ZIP_STORED)
    CountingFile.bytes_read = 0
    monkeypatch.setattr(archive, 'open', lambda name, mode: CountingFile(name, 'r'),
                        raising=False)
    assert archive.verify_zip(path, MEMBER)['member_size'] == len(xml)
    assert 0 < CountingFile.bytes_read < 64 * 1024


def test_verify_zip_ignores_destroyed_entry_data(tmp_path):
    path = build_export(tmp_path / 'a.zip')
    cd_offset = zip_layout(path)[2]
    with open(path, 'r+b') as handle:
        handle.write(b'\0' * cd_offset)
    assert archive.verify_zip(path, MEMBER)['encrypted'] is True


def test_writer_verify_zip(dest, tmp_path):
    with open(build_export(tmp_path / 'src.zip'), 'rb') as handle:
        data = handle.read()
    with archive.ArchiveWriter(dest, STEM + '.zip') as writer:
        writer.write(data)
        assert writer.verify_zip(MEMBER)['entries'] == 1


# --- listing and pruning ----------------------------------------------------------------------

def stamped(day):
    return 'secret-server-export-202405%02d120000.zip' % day


def test_list_archives_only_regular_archive_files(dest, tmp_path):
    for day in (3, 1, 2):
        touch(dest, stamped(day))
    touch(dest, 'notes.zip')
    touch(dest, archive.MANIFEST_NAME)
    touch(dest, '.' + stamped(9) + '.part-0123456789abcdef')
    os.mkdir(os.path.join(dest, stamped(8)))
    os.symlink(touch(str(tmp_path), 'elsewhere'), os.path.join(dest, stamped(7)))
    assert archive.list_archives(dest) == [stamped(3), stamped(2), stamped(1)]


def test_prune_keeps_newest_protected_and_non_archives(dest, tmp_path):
    for day in range(1, 8):
        touch(dest, stamped(day))
    others = ['notes.zip', 'secret-server-export-20240101.zip.bak', archive.MANIFEST_NAME]
    for name in others:
        touch(dest, name)
    elsewhere = touch(str(tmp_path), 'elsewhere')
    os.symlink(elsewhere, os.path.join(dest, stamped(0)))
    removed = archive.prune(dest, 3, protect=[stamped(2)])
    assert removed == [stamped(4), stamped(3), stamped(1)]
    assert sorted(os.listdir(dest)) == sorted(
        others + [stamped(day) for day in (0, 2, 5, 6, 7)])
    assert os.path.exists(elsewhere)


def test_prune_zero_keeps_all(dest):
    for day in range(1, 4):
        touch(dest, stamped(day))
    assert archive.prune(dest, 0) == []
    assert len(os.listdir(dest)) == 3


@pytest.mark.parametrize('keep', [-1, '3', 1.5, True, None])
def test_prune_refuses_bad_keep(dest, keep):
    with pytest.raises(ArchiveError, match='must be 0 or more'):
        archive.prune(dest, keep)


def test_prune_reports_unlink_failure(dest, monkeypatch):
    for day in range(1, 4):
        touch(dest, stamped(day))

    def refuse(path):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(archive.os, 'unlink', refuse)
    with pytest.raises(ArchiveError, match='Could not remove the old archive'):
        archive.prune(dest, 1)


# --- manifest ---------------------------------------------------------------------------------

def sha(data):
    return hashlib.sha256(data).hexdigest()


def manifest_text(dest):
    with open(os.path.join(dest, archive.MANIFEST_NAME)) as handle:
        return handle.read()


def test_hash_file_streams(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    assert archive.hash_file(touch(str(tmp_path), 'f', data)) == sha(data)
    with pytest.raises(ArchiveError, match='Could not read'):
        archive.hash_file(str(tmp_path / 'missing'))


def test_sync_manifest_lists_archives_in_sha256sum_format(dest):
    touch(dest, stamped(2), b'two')
    touch(dest, stamped(1), b'one')
    touch(dest, 'notes.txt', b'ignored')
    assert archive.sync_manifest(dest) is True
    assert manifest_text(dest) == '%s  %s\n%s  %s\n' % (
        sha(b'one'), stamped(1), sha(b'two'), stamped(2))
    assert stat.S_IMODE(os.stat(os.path.join(dest, archive.MANIFEST_NAME)).st_mode) == 0o600
    assert part_files(dest) == []


@pytest.mark.skipif(shutil.which('sha256sum') is None, reason='sha256sum is not installed')
def test_manifest_passes_sha256sum_check(dest):
    for day in range(1, 4):
        touch(dest, stamped(day), os.urandom(1000))
    archive.sync_manifest(dest)
    result = subprocess.run(['sha256sum', '--check', '--strict', archive.MANIFEST_NAME],
                            cwd=dest, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            check=False)
    assert result.returncode == 0, result.stdout


def test_sync_manifest_does_not_reread_listed_archives(dest, monkeypatch):
    touch(dest, stamped(1), b'one')
    archive.sync_manifest(dest)
    touch(dest, stamped(2), b'two')
    touch(dest, stamped(3), b'three')
    calls = []
    real_hash_file = archive.hash_file

    def counting_hash_file(path):
        calls.append(os.path.basename(path))
        return real_hash_file(path)
    monkeypatch.setattr(archive, 'hash_file', counting_hash_file)
    assert archive.sync_manifest(dest, known={stamped(3): sha(b'three').upper()}) is True
    assert calls == [stamped(2)]
    assert archive.read_manifest(dest) == {
        stamped(1): sha(b'one'), stamped(2): sha(b'two'), stamped(3): sha(b'three')}


def test_sync_manifest_unchanged_is_not_rewritten(dest):
    touch(dest, stamped(1), b'one')
    assert archive.sync_manifest(dest) is True
    path = os.path.join(dest, archive.MANIFEST_NAME)
    before = os.stat(path)
    assert archive.sync_manifest(dest) is False
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_sync_manifest_drops_pruned_and_removes_empty(dest):
    for day in (1, 2):
        touch(dest, stamped(day), b'%d' % day)
    archive.sync_manifest(dest)
    os.unlink(os.path.join(dest, stamped(1)))
    assert archive.sync_manifest(dest) is True
    assert list(archive.read_manifest(dest)) == [stamped(2)]
    os.unlink(os.path.join(dest, stamped(2)))
    assert archive.sync_manifest(dest) is True
    assert os.listdir(dest) == []
    assert archive.sync_manifest(dest) is False


def test_sync_manifest_refuses_malformed_known_hash(dest):
    touch(dest, stamped(1))
    with pytest.raises(ArchiveError, match='not 64 hex digits'):
        archive.sync_manifest(dest, known={stamped(1): 'abc'})


def test_read_manifest_ignores_malformed_lines(dest):
    good = sha(b'x')
    touch(dest, archive.MANIFEST_NAME, (
        '%s  %s\n' % (good, stamped(1))
        + '%s *%s\r\n' % (good.upper(), stamped(2))
        + 'garbage\n\n'
        + '%s  ../etc/passwd\n' % good
        + '%s  .hidden\n' % good
        + '%s %s\n' % (good[:-1], stamped(3))
    ).encode('utf-8') + b'\xff\xfe  broken\n')
    assert archive.read_manifest(dest) == {stamped(1): good, stamped(2): good}


def test_read_manifest_missing_is_empty(dest):
    assert archive.read_manifest(dest) == {}


def test_read_manifest_refuses_symlink(dest, tmp_path):
    os.symlink(touch(str(tmp_path), 'elsewhere'), os.path.join(dest, archive.MANIFEST_NAME))
    with pytest.raises(ArchiveError, match='not a symbolic link'):
        archive.read_manifest(dest)


def test_verify_manifest_finds_changed_and_missing(dest):
    for day in (1, 2, 3):
        touch(dest, stamped(day), b'%d' % day)
    archive.sync_manifest(dest)
    assert archive.verify_manifest(dest) == []
    touch(dest, stamped(2), b'tampered')
    os.unlink(os.path.join(dest, stamped(3)))
    assert archive.verify_manifest(dest) == [stamped(2), stamped(3)]


# --- metrics ----------------------------------------------------------------------------------

METRICS = [
    ('secretserver_backup_last_success_timestamp_seconds', 'Last good run.', 'gauge', 1714564800),
    ('secretserver_backup_archive_bytes', 'Size of the newest\narchive \\ in bytes.', 'gauge',
     1234.5),
    ('secretserver_backup_runs_total', 'Runs.', 'counter', 7),
    ('secretserver_backup_ok', 'Whether it worked.', 'gauge', True),
    ('secretserver_backup_missing', 'Left out.', 'gauge', None),
    ('secretserver_backup_nan', 'Not a number.', 'untyped', float('nan')),
    ('secretserver_backup_inf', 'Infinite.', 'gauge', float('-inf')),
]
LABELS = {'tenant': 'acme "prod"\\eu\nwest', 'dest': '/var/backups'}


def test_write_metrics_text_format(tmp_path, umask):
    umask(0o077)
    path = str(tmp_path / 'secretserver.prom')
    assert archive.write_metrics(path, METRICS, LABELS) is True
    labels = '{dest="/var/backups",tenant="acme \\"prod\\"\\\\eu\\nwest"}'
    with open(path) as handle:
        assert handle.read() == (
            '# HELP secretserver_backup_last_success_timestamp_seconds Last good run.\n'
            '# TYPE secretserver_backup_last_success_timestamp_seconds gauge\n'
            'secretserver_backup_last_success_timestamp_seconds%s 1714564800\n'
            '# HELP secretserver_backup_archive_bytes Size of the newest\\narchive \\\\ in bytes.\n'
            '# TYPE secretserver_backup_archive_bytes gauge\n'
            'secretserver_backup_archive_bytes%s 1234.5\n'
            '# HELP secretserver_backup_runs_total Runs.\n'
            '# TYPE secretserver_backup_runs_total counter\n'
            'secretserver_backup_runs_total%s 7\n'
            '# HELP secretserver_backup_ok Whether it worked.\n'
            '# TYPE secretserver_backup_ok gauge\n'
            'secretserver_backup_ok%s 1\n'
            '# HELP secretserver_backup_nan Not a number.\n'
            '# TYPE secretserver_backup_nan untyped\n'
            'secretserver_backup_nan%s NaN\n'
            '# HELP secretserver_backup_inf Infinite.\n'
            '# TYPE secretserver_backup_inf gauge\n'
            'secretserver_backup_inf%s -Inf\n' % ((labels,) * 6))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert part_files(str(tmp_path)) == []


def test_write_metrics_parses_with_prometheus_client(tmp_path):
    parser = pytest.importorskip('prometheus_client.parser')
    path = str(tmp_path / 'secretserver.prom')
    archive.write_metrics(path, METRICS, LABELS)
    with open(path) as handle:
        families = {family.name: family for family in
                    parser.text_string_to_metric_families(handle.read())}
    sample = families['secretserver_backup_archive_bytes'].samples[0]
    assert sample.labels == LABELS
    assert sample.value == 1234.5
    assert families['secretserver_backup_archive_bytes'].documentation == \
        'Size of the newest\narchive \\ in bytes.'


if given is not None:
    @settings(deadline=None)
    @given(strategies.text(strategies.characters(blacklist_categories=('Cs',))))
    def test_write_metrics_label_values_round_trip(value):
        parser = pytest.importorskip('prometheus_client.parser')
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, 'm.prom')
            archive.write_metrics(path, [('m', value, 'gauge', 1)], {'v': value})
            with open(path, encoding='utf-8', newline='') as handle:
                family, = parser.text_string_to_metric_families(handle.read())
        assert family.samples[0].labels == {'v': value}


def test_write_metrics_unchanged_and_without_labels(tmp_path):
    path = str(tmp_path / 'm.prom')
    metrics = [('up_total', 'Up.', 'counter', 1)]
    assert archive.write_metrics(path, metrics, None) is True
    assert archive.write_metrics(path, metrics, None) is False
    with open(path) as handle:
        assert handle.read().endswith('\nup_total 1\n')
    assert archive.write_metrics(path, [('up_total', 'Up.', 'counter', 2)], []) is True


@pytest.mark.parametrize('metric, labels', [
    (('bad name', 'h', 'gauge', 1), {}),
    (('ok', 'h', 'histogram', 1), {}),
    (('ok', 'h', 'gauge', 'many'), {}),
    (('ok', 'h', 'gauge', 1), {'bad-label': 'x'}),
])
def test_write_metrics_refuses_malformed_input(tmp_path, metric, labels):
    with pytest.raises(ArchiveError):
        archive.write_metrics(str(tmp_path / 'm.prom'), [metric], labels)
    assert os.listdir(str(tmp_path)) == []


def test_write_metrics_missing_directory(tmp_path):
    with pytest.raises(ArchiveError, match='Could not create a temporary file'):
        archive.write_metrics(str(tmp_path / 'no' / 'm.prom'), [], {})


# --- restore proof ----------------------------------------------------------------------------

@pytest.mark.parametrize('compression', [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_prove_archive_counts_records(tmp_path, compression):
    path = build_export(tmp_path / 'a.zip', compression=compression)
    before = sorted(os.listdir(str(tmp_path)))
    assert archive.prove_archive(path, MEMBER, PASSWORD) == {'secrets': 3, 'folders': 2}
    assert archive.prove_archive(path, MEMBER, PASSWORD.encode('utf-8'))['secrets'] == 3
    assert sorted(os.listdir(str(tmp_path))) == before


def test_prove_archive_with_namespace_and_many_chunks(tmp_path):
    secret = (b'<Secret><SecretName>s</SecretName><SecretItems><SecretItem><FieldName>Notes'
              b'</FieldName><Value>' + b'n' * 400 + b'</Value></SecretItem></SecretItems>'
              b'</Secret>')
    xml = (b'<ImportFile xmlns="urn:example"><Folders><Folder/></Folders><Secrets>'
           + secret * 6000 + b'</Secrets></ImportFile>')
    assert len(xml) > 2 * archive._CHUNK
    path = build_export(tmp_path / 'a.zip', xml=xml)
    assert archive.prove_archive(path, MEMBER, PASSWORD) == {'secrets': 6000, 'folders': 1}


def test_record_counter_memory_stays_flat():
    secret = b'<Secret><SecretItems><SecretItem><Value>' + b'v' * 200 + \
        b'</Value></SecretItem></SecretItems></Secret>'
    counter = archive._RecordCounter()
    tracemalloc.start()
    try:
        counter.feed(b'<ImportFile><Secrets>')
        for dummy in range(200):
            counter.feed(secret * 150)
        counter.feed(b'</Secrets></ImportFile>')
        counter.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counter.counts == {'secrets': 30000, 'folders': 0}
    assert peak < 2 * 1024 * 1024, 'the parsed tree was kept: %d bytes at peak' % peak


def test_prove_archive_wrong_password(tmp_path):
    path = build_export(tmp_path / 'a.zip')
    with pytest.raises(ArchiveError) as caught:
        archive.prove_archive(path, MEMBER, 'not the password')
    assert str(caught.value).startswith('The export password does not open a.zip')


@pytest.mark.parametrize('compression', [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
@pytest.mark.parametrize('where', ['ciphertext', 'authentication code'])
def test_prove_archive_flipped_byte_is_damage_not_password(tmp_path, compression, where):
    path = build_export(tmp_path / 'a.zip', compression=compression)
    start, end, dummy = zip_layout(path)
    flip_byte(path, (start + end) // 2 if where == 'ciphertext' else end + 3)
    with pytest.raises(ArchiveError) as caught:
        archive.prove_archive(path, MEMBER, PASSWORD)
    text = str(caught.value)
    assert text.startswith('The archive a.zip is damaged: its authentication code or compressed')
    assert 'password' not in text


if given is not None:
    @settings(max_examples=300, deadline=None)
    @given(strategies.integers(0, 10 ** 6), strategies.integers(1, 255))
    def test_prove_archive_fails_only_with_archive_error(position, mask):
        with tempfile.TemporaryDirectory() as scratch:
            path = build_export(os.path.join(scratch, 'a.zip'))
            with open(path, 'r+b') as handle:
                raw = bytearray(handle.read())
                raw[position % len(raw)] ^= mask
                handle.seek(0)
                handle.write(raw)
            try:
                result = archive.prove_archive(path, MEMBER, PASSWORD)
            except ArchiveError:
                return
            assert result == {'secrets': 3, 'folders': 2}


def test_prove_archive_broken_xml_is_damage(tmp_path):
    path = build_export(tmp_path / 'a.zip', xml=b'<ImportFile><Secrets><Secret></Secrets>')
    with pytest.raises(ArchiveError, match='is damaged'):
        archive.prove_archive(path, MEMBER, PASSWORD)


def test_prove_archive_not_a_zip_and_missing_member(tmp_path):
    with pytest.raises(ArchiveError, match='is damaged'):
        archive.prove_archive(touch(str(tmp_path), 'a.zip', b'not a zip'), MEMBER, PASSWORD)
    path = build_export(tmp_path / 'b.zip', member='other.xml')
    with pytest.raises(ArchiveError, match='does not contain the export file'):
        archive.prove_archive(path, MEMBER, PASSWORD)


@pytest.mark.parametrize('password', ['', b'', None])
def test_prove_archive_needs_a_password(tmp_path, password):
    path = build_export(tmp_path / 'a.zip')
    with pytest.raises(ArchiveError, match='No export password'):
        archive.prove_archive(path, MEMBER, password)


def test_prove_archive_without_pyzipper(tmp_path, monkeypatch):
    path = build_export(tmp_path / 'a.zip')
    monkeypatch.setitem(sys.modules, 'pyzipper', None)
    with pytest.raises(ArchiveError) as caught:
        archive.prove_archive(path, MEMBER, PASSWORD)
    assert 'Install the Python package pyzipper on the host where the archive is written' in \
        str(caught.value)


def test_prove_archive_on_writer_temp_file(dest, tmp_path):
    with open(build_export(tmp_path / 'src.zip'), 'rb') as handle:
        data = handle.read()
    with archive.ArchiveWriter(dest, STEM + '.zip') as writer:
        writer.write(data)
        assert archive.prove_archive(writer.path, MEMBER, PASSWORD)['folders'] == 2
        with pytest.raises(ArchiveError, match='does not open %s' % re.escape(STEM + '.zip')):
            archive.prove_archive(writer.path, MEMBER, 'wrong')
