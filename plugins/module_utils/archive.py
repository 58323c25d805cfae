# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Keeping Secret Server export archives on the managed host.

An export is the record Secret Server keeps of one automatic secret export; its archive is the
AES-encrypted ZIP holding every secret of the tenant, which this collection stores in a
destination directory (dest). Everything here works on local files only:

* prepare_dest creates dest owner-only (0700) and refuses a symbolic link or an unwritable one.
* ArchiveWriter streams a download into a hidden temporary file ``.<name>.part-<16 hex>`` in
  dest, owner-only from its first byte and flock-locked while the writer lives, and publishes it
  under its final name with a hard link: an archive never appears half written, and two runs
  storing the same export never overwrite each other (the second one learns it is already
  present). cleanup_stale_parts removes temporary files whose lock died with a killed run.
* verify_zip checks the ZIP structure (central directory only, nothing decrypted);
  prove_archive decrypts the export XML as a stream and counts its secrets and folders, proving
  the archive restores with the operator's password. No plaintext byte is ever written to disk.
* list_archives and prune only consider regular files named ``secret-server-export-*.zip``;
  other files in dest are never touched. prune does not update the manifest: call
  sync_manifest afterwards.
* The manifest SHA256SUMS lists every archive in dest in the format ``sha256sum -c`` reads,
  so archives can be checked without this collection.
* write_metrics writes a Prometheus text-format file, e.g. for node_exporter's textfile
  collector (its temporary file does not end in .prom, so the collector never reads it half
  written).

Every local failure raises ArchiveError saying what failed, where, and what to check next.
Needs only the standard library on Python 3.8+, except prove_archive, which needs pyzipper.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import hashlib
import math
import os
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from xml.etree import ElementTree

from ansible_collections.secretserver.backup.plugins.module_utils.errors import ArchiveError

ARCHIVE_SUFFIX = '.zip'
XML_SUFFIX = '.xml'
MANIFEST_NAME = 'SHA256SUMS'
ARCHIVE_PREFIX = 'secret-server-export-'

_CHUNK = 1024 * 1024
_NAME_MAX = 255
_PART_MARK = '.part-'
_PART_RE = re.compile(r'\A\.(.+)\.part-[0-9a-f]{16}\Z', re.DOTALL)
_STAMP_RE = re.compile(r'\Asecret-server-export-([0-9]+)')
_HEX64_RE = re.compile(r'\A[0-9a-fA-F]{64}\Z')
_MANIFEST_LINE_RE = re.compile(r'\A([0-9a-fA-F]{64}) [ *](.+)\Z', re.DOTALL)
_METRIC_NAME_RE = re.compile(r'\A[a-zA-Z_:][a-zA-Z0-9_:]*\Z')
_LABEL_NAME_RE = re.compile(r'\A[a-zA-Z_][a-zA-Z0-9_]*\Z')
_METRIC_TYPES = ('counter', 'gauge', 'untyped')
# Control (C0, DEL, C1), format (bidi overrides, zero-width), lone surrogates, line/paragraph
# separators: each can hide or fake part of a name in logs and terminals.
_UNSAFE_CATEGORIES = ('Cc', 'Cf', 'Cs', 'Zl', 'Zp')
# Filesystems without hard links (some FUSE, SMB and FAT mounts) answer os.link with these.
_LINK_UNSUPPORTED = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS)
_WINZIP_AES = 99
_FLAG_ENCRYPTED = 0x1
_RECORDS = {('Secret', 'Secrets'): 'secrets', ('Folder', 'Folders'): 'folders'}
_DAMAGED_HINT = ('The download is damaged or the server sent something that is not an export '
                 'archive: download the export again')


def _shown(value):
    """repr() short enough for a message, so a hostile value cannot flood the output."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _failure(action, exc, hint):
    return ArchiveError('%s: %s' % (action, getattr(exc, 'strerror', None) or exc), hint=hint)


def _unsafe_reason(name, reserve=0):
    """Why name is not a plain file name (None if it is); reserve: bytes a suffix will add."""
    if not isinstance(name, str) or not name:
        return 'it is not a non-empty string'
    if name.startswith('.'):
        return 'it starts with a dot, which makes it hidden or a directory reference'
    for char in name:
        if char in '/\\':
            return 'it contains a path separator'
        if unicodedata.category(char) in _UNSAFE_CATEGORIES:
            return 'it contains the invisible or control character U+%04X' % ord(char)
    size = len(name.encode('utf-8'))
    if size + reserve > _NAME_MAX:
        return 'it needs %d bytes, more than the %d a file name may have' % (size + reserve,
                                                                             _NAME_MAX)
    if os.path.basename(name) != name:
        return 'the system would read it as a path rather than a file name'
    return None


def validate_filename(filename, export_id):
    """Return filename if it is safe as the base name of an archive, else raise ArchiveError."""
    reason = _unsafe_reason(filename, len(ARCHIVE_SUFFIX))
    if reason:
        raise ArchiveError(
            'Export %s has the file name %s, which is not safe to store: %s; nothing was written'
            % (export_id, _shown(filename), reason),
            hint='Check the file name Secret Server reports for this export')
    return filename


def archive_name(filename):
    return filename + ARCHIVE_SUFFIX


def is_archive_name(name):
    """True only for names Secret Server gives export archives: the only files prune removes."""
    return (isinstance(name, str) and name.startswith(ARCHIVE_PREFIX)
            and name.endswith(ARCHIVE_SUFFIX)
            and _unsafe_reason(name[:-len(ARCHIVE_SUFFIX)], len(ARCHIVE_SUFFIX)) is None)


def archive_sort_key(name):
    """Sort key putting the newest archive first with reverse=True.

    The first 14 digits after the prefix are the export's YYYYMMDDhhmmss; names without them
    sort as the oldest.
    """
    match = _STAMP_RE.match(name)
    stamp = match.group(1)[:14].ljust(14, '0') if match else ''
    return (stamp, name)


def _display_name(path):
    """The name to show for path: a writer's temporary file is shown as its archive name."""
    base = os.path.basename(path)
    match = _PART_RE.match(base)
    return match.group(1) if match else base


# --- destination -------------------------------------------------------------------------------

def prepare_dest(path):
    """Make sure dest is a real directory this user can write; return True if it was created."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ArchiveError('The destination %s is not an absolute path' % _shown(path),
                           hint='Give dest as a full path such as /var/backups/secret-server')
    try:
        info = os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise _failure('Could not inspect the destination %s' % path, exc,
                           'A parent of it is a file, not a directory: check dest')
        if exc.errno != errno.ENOENT:
            raise _failure('Could not inspect the destination %s' % path, exc,
                           'Check the permissions of its parent directories')
        _make_private_dirs(path)
        _check_existing_dest(path, os.lstat(path))
        return True
    _check_existing_dest(path, info)
    return False


def _make_private_dirs(path):
    missing = []
    current = os.path.normpath(path)
    while not os.path.lexists(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except OSError as exc:
            if exc.errno == errno.EEXIST and os.path.isdir(directory):
                continue  # another run made it at the same moment: its mode is not ours to set
            raise _failure('Could not create the destination directory %s' % directory, exc,
                           'Check that its parent is a directory this user can write')
        # mkdir applied the umask; archives hold every secret, so 0700 whatever the umask is.
        os.chmod(directory, 0o700)


def _check_existing_dest(path, info):
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = '(unreadable target)'
        raise ArchiveError(
            'The destination %s is a symbolic link to %s; it is refused so that the archives '
            'cannot be redirected elsewhere' % (path, target),
            hint='Give the real directory as dest')
    if not stat.S_ISDIR(info.st_mode):
        raise ArchiveError('The destination %s exists but is not a directory' % path,
                           hint='Give a directory as dest, or move that file away')
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ArchiveError(
            'The destination %s is not readable and writable by the user this runs as (uid %d)'
            % (path, os.getuid()),
            hint='Check the owner and mode of the directory, or run the task with become')


# --- writing ------------------------------------------------------------------------------------

def _part_name(name):
    token = os.urandom(8).hex()
    # Cut long names so the temporary name stays within NAME_MAX; only the final name matters.
    room = _NAME_MAX - len('.') - len(_PART_MARK) - len(token)
    stem = name.encode('utf-8')[:room].decode('utf-8', 'ignore')
    return '.' + stem + _PART_MARK + token


def _try_lock(fd):
    """Take an exclusive flock without waiting; False if another open file holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    return True


def _same_file(fd, path):
    try:
        on_disk = os.lstat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _fsync_dir(path):
    """Make a rename or link in path durable, where the filesystem supports that."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0) | os.O_CLOEXEC)
    except OSError as exc:
        raise _failure('Could not open the directory %s to flush it' % path, exc,
                       'Check that it still exists and is readable')
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise _failure('Could not flush the directory %s to disk' % path, exc,
                           'Check the health of its filesystem')
    finally:
        os.close(fd)


class ArchiveWriter:
    """Write a file into dest under a temporary name and publish it whole, or not at all.

    Use it as a context manager: leaving the block without commit() (or with an exception)
    removes the temporary file. The temporary file is created 0600 and keeps an exclusive flock
    until the writer ends, which tells cleanup_stale_parts in another run to leave it alone.
    """

    _OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

    def __init__(self, dest, name):
        reason = _unsafe_reason(name)
        if reason:
            raise ArchiveError('Cannot store a file named %s in %s: %s'
                               % (_shown(name), dest, reason),
                               hint='This is a bug in the calling module; please report it')
        self.dest = dest
        self.name = name
        self.final_path = os.path.join(dest, name)
        self._path = None
        self._fd = None
        self._temp_exists = False
        self._hash = hashlib.sha256()
        self._size = 0

    def __enter__(self):
        # A concurrent cleanup_stale_parts may lock and delete a brand-new file before this
        # writer locks it; a fresh name then succeeds, so three tries are plenty.
        for dummy in range(3):
            if self._claim_temp():
                return self
        raise ArchiveError('Could not claim a temporary file in %s for %s' % (self.dest, self.name),
                           hint='Another run keeps deleting them; check for cleanup jobs on dest')

    def _claim_temp(self):
        path = os.path.join(self.dest, _part_name(self.name))
        try:
            fd = os.open(path, self._OPEN_FLAGS, 0o600)
        except OSError as exc:
            raise _failure('Could not create a temporary file in %s for %s'
                           % (self.dest, self.name), exc,
                           'Check that dest exists, is writable by this user and has free space')
        try:
            claimed = _try_lock(fd) and _same_file(fd, path)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(path)
            raise _failure('Could not lock the temporary file %s' % path, exc,
                           'The filesystem of dest must support flock()')
        if not claimed:
            os.close(fd)
            return False
        self._fd, self._path, self._temp_exists = fd, path, True
        return True

    def __exit__(self, exc_type, exc_value, traceback):
        try:
            self._discard()
        except ArchiveError:
            if exc_type is None:
                raise
        return False

    @property
    def path(self):
        """The temporary file being written (None until the with block starts)."""
        return self._path

    @property
    def size(self):
        return self._size

    @property
    def sha256(self):
        return self._hash.hexdigest()

    def _require_open(self, action):
        if self._fd is None:
            raise ArchiveError('Cannot %s %s: the writer is not open (use it in a with block, '
                               'before commit)' % (action, self.final_path),
                               hint='This is a bug in the calling module; please report it')

    def write(self, data):
        """Append bytes (or a memoryview) to the temporary file and to the running SHA-256."""
        self._require_open('write')
        view = memoryview(data).cast('B')
        done = 0
        try:
            while done < len(view):
                written = os.write(self._fd, view[done:])
                if written <= 0:
                    raise OSError(errno.EIO, 'the system accepted no bytes')
                done += written
        except OSError as exc:
            raise _failure('Writing %s failed' % self._path, exc,
                           'Check the free space and quota of the filesystem of %s' % self.dest)
        self._hash.update(view)
        self._size += len(view)

    def reset(self):
        """Drop everything written so far, e.g. before retrying a broken download."""
        self._require_open('reset')
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise _failure('Could not empty %s for a retry' % self._path, exc,
                           'Check the filesystem of %s' % self.dest)
        self._hash = hashlib.sha256()
        self._size = 0

    def set_attributes(self, mode=None, uid=-1, gid=-1):
        """Set mode and owner on the temporary file, so the final name never has looser ones."""
        self._require_open('set attributes of')
        uid = -1 if uid is None else uid
        gid = -1 if gid is None else gid
        try:
            if uid != -1 or gid != -1:
                os.fchown(self._fd, uid, gid)
            # After chown, which may clear setuid/setgid bits the mode asks for.
            if mode is not None:
                os.fchmod(self._fd, mode)
        except OSError as exc:
            raise _failure('Could not set owner %s, group %s, mode %s on %s'
                           % (uid, gid, _shown(mode), self._path), exc,
                           'Check that the owner and group exist and that this user may set them')

    def verify_zip(self, member):
        """verify_zip() on what was written so far (os.write is unbuffered: nothing to flush)."""
        self._require_open('verify')
        return verify_zip(self._path, member)

    def commit(self, replace=False):
        """Publish the file as dest/name; False if it was already there and replace is False."""
        self._require_open('publish')
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _failure('Could not flush %s to disk' % self._path, exc,
                           'Check the free space and health of the filesystem of %s' % self.dest)
        if replace:
            self._rename_into_place()
            published = True
        else:
            published = self._link_into_place()
        self._discard()
        _fsync_dir(self.dest)
        return published

    def _link_into_place(self):
        try:
            os.link(self._path, self.final_path)
            return True
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            if exc.errno not in _LINK_UNSUPPORTED:
                raise _failure('Could not publish %s as %s' % (self._path, self.final_path), exc,
                               'Check that this user can still write to %s' % self.dest)
        return self._claim_then_rename()

    def _claim_then_rename(self):
        # Without hard links, an empty placeholder created with O_EXCL claims the name, so the
        # rename below can only ever replace this run's own placeholder, never another archive.
        try:
            os.close(os.open(self.final_path, self._OPEN_FLAGS, 0o600))
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise _failure('Could not claim the name %s' % self.final_path, exc,
                           'Check that this user can still write to %s' % self.dest)
        try:
            self._rename_into_place()
        except ArchiveError:
            _unlink_quietly(self.final_path)
            raise
        return True

    def _rename_into_place(self):
        try:
            os.rename(self._path, self.final_path)
        except OSError as exc:
            raise _failure('Could not publish %s as %s' % (self._path, self.final_path), exc,
                           'Check that %s is not a directory and dest is writable'
                           % self.final_path)
        self._temp_exists = False

    def _discard(self):
        """Remove the temporary file if it is still there, then release the lock."""
        try:
            if self._temp_exists:
                os.unlink(self._path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise _failure('Could not remove the temporary file %s' % self._path, exc,
                               'Remove it by hand; nothing was published from it')
        finally:
            self._temp_exists = False
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def cleanup_stale_parts(dest):
    """Remove temporary files left in dest by killed writers; return their names.

    A live writer holds its flock, a killed one's lock went away with its process. Symbolic
    links, other kinds of files and files this user cannot open or remove are left alone.
    """
    removed = []
    for name in sorted(_list_dir(dest)):
        if _PART_RE.match(name) and _remove_if_abandoned(os.path.join(dest, name)):
            removed.append(name)
    return removed


def _remove_if_abandoned(path):
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # Checking the name still points at the locked file keeps a newer file of that name.
        if _try_lock(fd) and _same_file(fd, path):
            os.unlink(path)
            return True
        return False
    except OSError:
        return False
    finally:
        os.close(fd)


# --- inspecting ---------------------------------------------------------------------------------

def verify_zip(path, member):
    """Check path is a ZIP archive holding member, reading only its central directory.

    Returns {'entries': n, 'encrypted': bool, 'member_size': uncompressed bytes of member}.
    """
    shown = _display_name(path)
    try:
        with open(path, 'rb') as handle:
            with zipfile.ZipFile(handle) as archive:
                entries = archive.infolist()
                info = _find_member(archive, member, shown)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error,
            OverflowError) as exc:
        raise ArchiveError('%s is not a complete ZIP archive (%s)' % (shown, exc),
                           hint=_DAMAGED_HINT)
    except NotImplementedError as exc:
        raise ArchiveError('%s uses a ZIP feature the Python zipfile module on this host cannot '
                           'read (%s)' % (shown, exc),
                           hint='Check the archive with another tool; a newer Python may read it')
    except OSError as exc:
        raise _failure('Could not read %s' % path, exc, 'Check that it exists and is readable')
    return {
        'entries': len(entries),
        'encrypted': info.compress_type == _WINZIP_AES or bool(info.flag_bits & _FLAG_ENCRYPTED),
        'member_size': info.file_size,
    }


def _find_member(archive, member, shown):
    try:
        return archive.getinfo(member)
    except KeyError:
        names = [_shown(name) for name in archive.namelist()[:5]]
        raise ArchiveError('%s does not contain the export file %s (it holds %d entries: %s)'
                           % (shown, _shown(member), len(archive.namelist()),
                              ', '.join(names) or 'none'),
                           hint=_DAMAGED_HINT)


def list_archives(dest):
    """Names of the archives in dest (regular files with archive names), newest first."""
    found = [name for name in _list_dir(dest)
             if is_archive_name(name) and _is_regular(os.path.join(dest, name))]
    return sorted(found, key=archive_sort_key, reverse=True)


def _list_dir(dest):
    try:
        return os.listdir(dest)
    except OSError as exc:
        raise _failure('Could not list the destination %s' % dest, exc,
                       'Check that it exists and is readable by this user')


def _is_regular(path):
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def prune(dest, keep, protect=()):
    """Remove all but the newest keep archives (0 keeps all) and those in protect."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ArchiveError('The number of archives to keep must be 0 or more, not %s'
                           % _shown(keep), hint='0 keeps every archive')
    if keep == 0:
        return []
    spared = set(protect or ())
    removed = []
    for name in list_archives(dest)[keep:]:
        if name not in spared and _unlink_archive(dest, name, removed):
            removed.append(name)
    return removed


def _unlink_archive(dest, name, removed):
    try:
        os.unlink(os.path.join(dest, name))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False  # another run pruned it first
        raise _failure('Could not remove the old archive %s from %s (already removed: %s)'
                       % (name, dest, ', '.join(removed) or 'none'), exc,
                       'Check the permissions of %s' % dest)
    return True


# --- manifest -----------------------------------------------------------------------------------

def hash_file(path):
    """SHA-256 of a file as hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, 'rb') as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b''):
                digest.update(chunk)
    except OSError as exc:
        raise _failure('Could not read %s to compute its SHA-256' % path, exc,
                       'Check that it exists and is readable by this user')
    return digest.hexdigest()


def _read_if_present(path):
    """Bytes of the regular file at path, or None if there is none; never follows a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise _failure('Could not read %s' % path, exc,
                       'It must be a regular file (not a symbolic link) readable by this user')
    try:
        with os.fdopen(fd, 'rb') as handle:
            return handle.read()
    except OSError as exc:
        raise _failure('Could not read %s' % path, exc, 'It must be a regular file')


def read_manifest(dest):
    """name -> hex SHA-256 listed in dest/SHA256SUMS; malformed lines and a missing file: {}."""
    data = _read_if_present(os.path.join(dest, MANIFEST_NAME))
    entries = {}
    for line in (data or b'').decode('utf-8', 'surrogateescape').split('\n'):
        match = _MANIFEST_LINE_RE.match(line.rstrip('\r'))
        if match and _unsafe_reason(match.group(2)) is None:
            entries[match.group(2)] = match.group(1).lower()
    return entries


def sync_manifest(dest, known=None):
    """Make SHA256SUMS list exactly the archives in dest; return True if it changed.

    known: name -> hex SHA-256 computed while downloading, used as is. Archives the manifest
    already lists keep their hash unread; only archives listed nowhere are hashed.
    """
    known = known or {}
    listed = read_manifest(dest)
    lines = []
    for name in sorted(list_archives(dest)):
        digest = known.get(name) or listed.get(name) or hash_file(os.path.join(dest, name))
        if not _HEX64_RE.match(digest):
            raise ArchiveError('The SHA-256 given for %s is not 64 hex digits: %s'
                               % (name, _shown(digest)),
                               hint='This is a bug in the calling module; please report it')
        lines.append('%s  %s\n' % (digest.lower(), name))
    if not lines:
        return _remove_manifest(dest)
    return _replace_if_different(dest, MANIFEST_NAME, ''.join(lines).encode('utf-8'), 0o600)


def _remove_manifest(dest):
    path = os.path.join(dest, MANIFEST_NAME)
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise _failure('Could not remove the manifest %s' % path, exc,
                       'Check the permissions of %s' % dest)
    return True


def _replace_if_different(directory, name, content, mode):
    """Atomically write content as directory/name unless it already holds exactly that."""
    if _read_if_present(os.path.join(directory, name)) == content:
        return False
    with ArchiveWriter(directory, name) as writer:
        writer.write(content)
        writer.set_attributes(mode=mode)
        writer.commit(replace=True)
    return True


def verify_manifest(dest):
    """Names listed in SHA256SUMS whose archive is missing or no longer has the listed hash."""
    mismatched = []
    for name, digest in sorted(read_manifest(dest).items()):
        path = os.path.join(dest, name)
        if not _is_regular(path) or hash_file(path) != digest:
            mismatched.append(name)
    return mismatched


# --- metrics ------------------------------------------------------------------------------------

def write_metrics(path, metrics, labels):
    """Write metrics to path in the Prometheus text format, atomically, mode 0644.

    metrics: (name, help, type, value) tuples, type one of counter, gauge, untyped; a metric
    whose value is None is left out. labels: dict (written sorted by name) or (name, value)
    pairs, put on every sample. Returns False if path already held exactly this content.
    """
    label_text = _render_labels(labels)
    lines = []
    for name, help_text, kind, value in metrics:
        if value is None:
            continue
        if not _METRIC_NAME_RE.match(name) or kind not in _METRIC_TYPES:
            raise ArchiveError('Cannot write the metric %s of type %s to %s'
                               % (_shown(name), _shown(kind), path),
                               hint='This is a bug in the calling module; please report it')
        help_line = str(help_text).replace('\\', '\\\\').replace('\n', '\\n')
        lines.append('# HELP %s %s\n# TYPE %s %s\n' % (name, help_line, name, kind))
        lines.append('%s%s %s\n' % (name, label_text, _format_value(value, name, path)))
    directory, name = os.path.split(path)
    return _replace_if_different(directory or '.', name, ''.join(lines).encode('utf-8'), 0o644)


def _render_labels(labels):
    pairs = sorted(labels.items()) if isinstance(labels, dict) else list(labels or ())
    rendered = []
    for name, value in pairs:
        if not isinstance(name, str) or not _LABEL_NAME_RE.match(name):
            raise ArchiveError('Cannot use %s as a Prometheus label name' % _shown(name),
                               hint='This is a bug in the calling module; please report it')
        text = str(value).replace('\\', '\\\\').replace('\n', '\\n').replace('"', '\\"')
        rendered.append('%s="%s"' % (name, text))
    return '{%s}' % ','.join(rendered) if rendered else ''


def _format_value(value, name, path):
    if isinstance(value, bool):
        return '1' if value else '0'
    if isinstance(value, int):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ArchiveError('The value %s of the metric %s for %s is not a number'
                           % (_shown(value), name, path),
                           hint='This is a bug in the calling module; please report it')
    if math.isnan(number):
        return 'NaN'
    if math.isinf(number):
        return '+Inf' if number > 0 else '-Inf'
    return repr(number)


# --- restore proof ------------------------------------------------------------------------------

class _RecordCounter:
    """Counts Secret and Folder records in a streamed export XML with flat memory.

    Each finished element is detached from its parent, so the tree never holds more than the
    path from the root to the element being parsed.
    """

    def __init__(self):
        self._parser = ElementTree.XMLPullParser(events=('start', 'end'))
        self._open = []
        self.counts = {'secrets': 0, 'folders': 0}

    def feed(self, data):
        self._parser.feed(data)
        self._drain()

    def close(self):
        self._parser.close()
        self._drain()

    def _drain(self):
        for event, element in self._parser.read_events():
            if event == 'start':
                self._open.append(element)
                continue
            self._open.pop()
            if not self._open:
                continue
            parent = self._open[-1]
            record = _RECORDS.get((_local_name(element.tag), _local_name(parent.tag)))
            if record:
                self.counts[record] += 1
            parent.remove(element)


def _local_name(tag):
    return tag.rsplit('}', 1)[-1]


def _load_pyzipper():
    try:
        import pyzipper  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ArchiveError('Checking that an export archive can be restored needs the Python '
                           'package pyzipper, which is not installed',
                           hint='Install the Python package pyzipper on the host where the '
                                'archive is written (pip install pyzipper), or leave '
                                'export_password unset to store archives without opening them')
    return pyzipper


def require_pyzipper():
    """Fail early, before anything is downloaded, when prove_archive could not run here."""
    _load_pyzipper()


def prove_archive(path, member, password):
    """Decrypt member of path as a stream and count its records: {'secrets': n, 'folders': m}.

    Proves the archive restores with password (the one the export is encrypted with) without
    holding the whole XML in memory or writing any plaintext to disk.
    """
    pyzipper = _load_pyzipper()
    shown = _display_name(path)
    pwd = _password_bytes(password, shown)
    counter = _RecordCounter()
    try:
        with pyzipper.AESZipFile(path) as archive:
            with _open_member(archive, member, pwd, shown) as stream:
                for chunk in iter(lambda: stream.read(_CHUNK), b''):
                    counter.feed(chunk)
        counter.close()
    except (pyzipper.BadZipFile, zipfile.BadZipFile, zlib.error, EOFError, ValueError,
            struct.error, ElementTree.ParseError) as exc:
        raise ArchiveError('The archive %s is damaged: its authentication code or compressed '
                           'data is invalid (%s)' % (shown, exc), hint=_DAMAGED_HINT)
    except NotImplementedError as exc:
        raise ArchiveError('The archive %s uses a method this host cannot read (%s)'
                           % (shown, exc), hint='Update the Python package pyzipper')
    except OSError as exc:
        raise _failure('Could not read %s' % path, exc, 'Check that it exists and is readable')
    return dict(counter.counts)


def _password_bytes(password, shown):
    if isinstance(password, str):
        password = password.encode('utf-8')
    if not password or not isinstance(password, bytes):
        raise ArchiveError('No export password was given to open %s' % shown,
                           hint='Pass the password Secret Server encrypts the exports with')
    return password


def _open_member(archive, member, pwd, shown):
    try:
        return archive.open(member, pwd=pwd)
    except KeyError:
        raise ArchiveError('%s does not contain the export file %s' % (shown, _shown(member)),
                           hint=_DAMAGED_HINT)
    except RuntimeError as exc:
        if 'password' not in str(exc).lower():
            raise ArchiveError('The archive %s cannot be opened (%s)' % (shown, exc),
                               hint=_DAMAGED_HINT)
        raise ArchiveError('The export password does not open %s' % shown,
                           hint='Check that it is the password Secret Server encrypts the '
                                'automatic exports with')
