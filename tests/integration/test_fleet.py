"""The backup_exports role at fleet scale, through ansible-playbook against the emulator.

Every test drives the real playbook (or a play with serial) over an inventory of local hosts,
each with its own dest under tmp_path, and reads what the tenant saw from the emulator's
request counts: sign-ins (token), storage list reads (list) and archive downloads (download).
"""

import hashlib
import json
import os
import pathlib
import re
import stat
import subprocess
import time

import pytest

import support
from ansible_collections.secretserver.backup.plugins.module_utils.records import (
    storage_timestamp,
)

PLAYBOOK = os.path.join(support.ROOT, 'playbooks', 'backup.yml')
FIVE = ['h1', 'h2', 'h3', 'h4', 'h5']
MANIFEST = 'SHA256SUMS'
DAY_NS = 86400 * 10 ** 9
# Far above a clock tick (1 to 10 ms), far below the start-up of a module process.
READ_AFTER_NS = 50 * 10 ** 6


# --- fleet set-up -------------------------------------------------------------------------------


def unwrapped(text):
    """text without white space: older ansible-core wraps long warnings, even inside names."""
    return re.sub(r'\s+', '', text)


def make_fleet(tmp_path, hosts, host_vars=None):
    """A YAML inventory of local hosts, each with its own dest; returns (inventory, dests)."""
    inventory = {}
    for host in hosts:
        entry = {'ansible_connection': 'local',
                 'ansible_python_interpreter': support.MANAGED_PYTHON,
                 'backup_exports_dest': str(tmp_path / host / 'backups')}
        entry.update((host_vars or {}).get(host, {}))
        inventory[host] = entry
    dests = {host: pathlib.Path(entry['backup_exports_dest']) for host, entry in inventory.items()}
    path = tmp_path / 'hosts.yml'
    # JSON is YAML, and it quotes every path whatever characters tmp_path has.
    path.write_text(json.dumps({'all': {'hosts': inventory}}))
    return str(path), dests


def role_vars(emulator, tmp_path, **extra):
    values = {
        'backup_exports_base_url': emulator.url,
        'backup_exports_username': support.USER['username'],
        'backup_exports_password': support.USER['password'],
        'backup_exports_controller_cache': str(tmp_path / 'cache'),
        'backup_exports_keep': 3,
    }
    values.update(extra)
    return values


def play(emulator, tmp_path, inventory, playbook=PLAYBOOK, check=False, verbosity=0,
         faults=(), **extra):
    """One ansible-playbook run; the emulator's request log starts empty for it."""
    emulator.reset()
    if faults:
        # After the reset, which drops faults too.
        emulator.add_faults(*faults)
    return support.run_playbook(playbook, tmp_path,
                                extra_vars=role_vars(emulator, tmp_path, **extra),
                                inventory=inventory, check=check, verbosity=verbosity)


def counts(emulator):
    return emulator.state()['counts']


def recaps(run, hosts):
    return {host: run.recap(host) for host in hosts}


def changed_hosts(run, hosts):
    return sorted(h for h, recap in recaps(run, hosts).items() if recap['changed'])


def failed_hosts(run, hosts):
    return sorted(h for h, recap in recaps(run, hosts).items() if recap['failed'])


# --- what the tenant holds ----------------------------------------------------------------------

def by_age(emulator):
    """The emulator's records, newest first, by storage date read as UTC."""
    return sorted(emulator.records(),
                  key=lambda r: (storage_timestamp(r['storageDate']), r['id']), reverse=True)


def newest_downloadable(emulator):
    return next(r for r in by_age(emulator) if r['canDownload'])


def archive_of(record):
    return record['filename'] + '.zip'


# --- what a host holds --------------------------------------------------------------------------

def archives_in(dest):
    return sorted(n for n in os.listdir(str(dest)) if n.endswith('.zip'))


def manifest_of(dest):
    entries = {}
    for line in (dest / MANIFEST).read_text().splitlines():
        digest, name = line.split('  ', 1)
        entries[name] = digest
    return entries


def sha256sum_check(dest):
    """The real coreutils sha256sum -c, run inside dest as an operator would."""
    return subprocess.run(['sha256sum', '-c', '--strict', MANIFEST], cwd=str(dest),
                          capture_output=True, text=True, check=False)


def assert_holds_exactly(emulator, dest, records):
    """dest holds exactly these archives, as served, 0600, in a manifest sha256sum accepts."""
    expected = {archive_of(r): emulator.archive_bytes(r['id']) for r in records}
    assert archives_in(dest) == sorted(expected)
    for name, served in expected.items():
        assert (dest / name).read_bytes() == served, name
        assert stat.S_IMODE(os.stat(str(dest / name)).st_mode) == 0o600, name
    assert manifest_of(dest) == {n: hashlib.sha256(b).hexdigest() for n, b in expected.items()}
    check = sha256sum_check(dest)
    assert check.returncode == 0, check.stdout + check.stderr


def identity(path):
    info = os.stat(str(path))
    return info.st_ino, info.st_mtime_ns, info.st_atime_ns


def age_atime(path):
    """Put the access time a day before the modification time, so that relatime (and strict
    atime) record the next read of the file."""
    info = os.stat(str(path))
    os.utime(str(path), ns=(info.st_mtime_ns - DAY_NS, info.st_mtime_ns))


def reads_are_recorded(tmp_path):
    """Whether this filesystem updates atime on a read after age_atime (noatime does not)."""
    probe = tmp_path / 'atime-probe'
    probe.write_bytes(b'probe')
    age_atime(probe)
    before = os.stat(str(probe)).st_atime_ns
    probe.read_bytes()
    return os.stat(str(probe)).st_atime_ns != before


def read_after_placed(path):
    """Whether a later task read the file after it took its name.

    Placing it (link or rename) and setting its mode move ctime; a later read moves atime past
    ctime (relatime too, as long as atime was not past ctime already: a read in the same clock
    tick as the placement can hide a later one, never invent one). The two may be stamped from
    clocks one tick apart, so only a read well after the placement counts: a later task starts
    a new module process, far more than READ_AFTER_NS after the module that placed the file.
    """
    info = os.stat(str(path))
    return info.st_atime_ns - info.st_ctime_ns > READ_AFTER_NS


def archive_puts(run, cache):
    """Files the connection transferred out of the controller cache (PUT lines of -vvv)."""
    return re.findall(r'^<(\S+)> PUT %s/(\S+) TO ' % re.escape(str(cache)), run.output, re.M)


# --- 1. download once, distribute ---------------------------------------------------------------

def test_controller_mode_downloads_once_and_copies_byte_identical_archives_to_five_hosts(
        emulator, tmp_path):
    inventory, dests = make_fleet(tmp_path, FIVE)
    cache = tmp_path / 'cache'
    newest = newest_downloadable(emulator)

    first = play(emulator, tmp_path, inventory, verbosity=3,
                 backup_exports_download_on='controller')

    assert first.rc == 0, first.output[-4000:]
    atime_works = reads_are_recorded(tmp_path)
    if atime_works:
        # The manifests were written from the hash the controller computed while downloading.
        assert [h for h in FIVE if read_after_placed(dests[h] / archive_of(newest))] == []
    assert counts(emulator)['token'] == 1
    assert counts(emulator)['list'] == 1
    assert counts(emulator)['download'] == 1
    for host in FIVE:
        assert_holds_exactly(emulator, dests[host], [newest])
    assert changed_hosts(first, FIVE) == FIVE
    # Ansible's own transfer carried the archive: once to each host, from the cache.
    assert sorted(archive_puts(first, cache)) == [(h, archive_of(newest)) for h in FIVE]
    assert stat.S_IMODE(os.stat(str(cache)).st_mode) == 0o700
    assert (cache / archive_of(newest)).read_bytes() == emulator.archive_bytes(newest['id'])

    archives = {h: dests[h] / archive_of(newest) for h in FIVE}
    for path in archives.values():
        age_atime(path)
    before = {h: identity(p) for h, p in archives.items()}

    second = play(emulator, tmp_path, inventory, verbosity=3,
                  backup_exports_download_on='controller')

    assert second.rc == 0, second.output[-4000:]
    assert changed_hosts(second, FIVE) == []
    assert counts(emulator)['download'] == 0
    assert counts(emulator)['token'] == 1
    assert archive_puts(second, cache) == []
    assert 'AnsiballZ_copy.py' not in second.output
    after = {h: identity(p) for h, p in archives.items()}
    if atime_works:
        # Same inode and mtime: not replaced. Same atime: not even read, neither by the copy
        # action's stat nor by the manifest refresh.
        assert after == before
    else:
        assert {h: i[:2] for h, i in after.items()} == {h: i[:2] for h, i in before.items()}
    for host in FIVE:
        assert_holds_exactly(emulator, dests[host], [newest])


def test_serial_batches_after_the_first_download_nothing(emulator, tmp_path):
    inventory, dests = make_fleet(tmp_path, FIVE)
    playbook = tmp_path / 'serial.yml'
    playbook.write_text(
        '- name: Back up two hosts at a time\n'
        '  hosts: all\n'
        '  serial: 2\n'
        '  gather_facts: false\n'
        '  roles:\n'
        '    - role: secretserver.backup.backup_exports\n')
    newest = newest_downloadable(emulator)

    run = play(emulator, tmp_path, inventory, playbook=str(playbook),
               backup_exports_download_on='controller')

    assert run.rc == 0, run.output[-4000:]
    assert counts(emulator)['download'] == 1
    # Each of the three batches (2, 2, 1 hosts) reads the storage list once and finds the
    # archive in the controller cache.
    assert counts(emulator)['token'] == 3
    assert counts(emulator)['list'] == 3
    for host in FIVE:
        assert_holds_exactly(emulator, dests[host], [newest])


def test_host_that_failed_part_way_gets_the_archive_next_run_and_others_are_untouched(
        emulator, tmp_path):
    blocker = tmp_path / 'h3-blocker'
    blocker.write_text('a file where the dest of h3 needs a directory')
    inventory, dests = make_fleet(
        tmp_path, FIVE, {'h3': {'backup_exports_dest': str(blocker / 'backups')}})
    others = [h for h in FIVE if h != 'h3']
    newest = newest_downloadable(emulator)

    first = play(emulator, tmp_path, inventory, backup_exports_download_on='controller')

    assert first.rc != 0
    assert failed_hosts(first, FIVE) == ['h3']
    for host in others:
        assert_holds_exactly(emulator, dests[host], [newest])
    before = {h: identity(dests[h] / archive_of(newest))[:2] for h in others}
    blocker.unlink()

    second = play(emulator, tmp_path, inventory, backup_exports_download_on='controller')

    assert second.rc == 0, second.output[-4000:]
    assert counts(emulator)['download'] == 0
    assert changed_hosts(second, FIVE) == ['h3']
    assert_holds_exactly(emulator, dests['h3'], [newest])
    assert {h: identity(dests[h] / archive_of(newest))[:2] for h in others} == before


def test_host_mode_downloads_on_each_of_five_hosts(emulator, tmp_path):
    inventory, dests = make_fleet(tmp_path, FIVE)
    newest = newest_downloadable(emulator)

    first = play(emulator, tmp_path, inventory, backup_exports_download_on='host')

    assert first.rc == 0, first.output[-4000:]
    assert counts(emulator)['download'] == 5
    assert counts(emulator)['token'] == 5
    for host in FIVE:
        assert_holds_exactly(emulator, dests[host], [newest])
    assert not (tmp_path / 'cache').exists()

    second = play(emulator, tmp_path, inventory, backup_exports_download_on='host')

    assert second.rc == 0, second.output[-4000:]
    assert changed_hosts(second, FIVE) == []
    assert counts(emulator)['download'] == 0


@pytest.mark.parametrize('mode', ['controller', 'host'])
def test_check_mode_first_run_succeeds_and_writes_nothing(emulator, tmp_path, mode):
    inventory, dests = make_fleet(tmp_path, ['h1', 'h2'])

    run = play(emulator, tmp_path, inventory, check=True, backup_exports_download_on=mode)

    assert run.rc == 0, run.output[-4000:]
    assert changed_hosts(run, ['h1', 'h2']) == ['h1', 'h2']
    assert counts(emulator)['download'] == 0
    assert not any(dest.exists() for dest in dests.values())
    assert not (tmp_path / 'cache').exists()


# --- 2. mirror ----------------------------------------------------------------------------------

@pytest.mark.parametrize('mode, hosts', [('host', ['h1']), ('controller', ['h1', 'h2'])])
def test_mirror_fetches_every_downloadable_export_in_the_keep_window_with_one_sign_in(
        emulator, tmp_path, mode, hosts):
    emulator.set_exports(count=25)
    window = by_age(emulator)[:5]
    blocked = [r for r in window if not r['canDownload']]
    wanted = [r for r in window if r['canDownload']]
    # The emulator withholds the third newest: the window is the newest five records, so the
    # module stores the four it may download and warns about that one.
    assert len(blocked) == 1 and len(wanted) == 4
    inventory, dests = make_fleet(tmp_path, hosts)

    first = play(emulator, tmp_path, inventory, backup_exports_download_on=mode,
                 backup_exports_select='all', backup_exports_keep=5)

    assert first.rc == 0, first.output[-4000:]
    if reads_are_recorded(tmp_path):
        # Hashed while downloading, so the manifest step read none of them.
        assert [(h, archive_of(r)) for h in hosts for r in wanted
                if read_after_placed(dests[h] / archive_of(r))] == []
    assert counts(emulator)['token'] == 1
    assert counts(emulator)['list'] == 1
    assert counts(emulator)['download'] == 4
    for host in hosts:
        assert_holds_exactly(emulator, dests[host], wanted)
    # Older ansible-core wraps long warnings across lines, even inside hyphenated names.
    flat = unwrapped(first.output)
    assert unwrapped('%s (id %d)' % (blocked[0]['filename'], blocked[0]['id'])) in flat
    assert unwrapped('may not download') in flat

    second = play(emulator, tmp_path, inventory, backup_exports_download_on=mode,
                  backup_exports_select='all', backup_exports_keep=5)

    assert second.rc == 0, second.output[-4000:]
    assert counts(emulator)['download'] == 0
    assert counts(emulator)['token'] == 1
    assert changed_hosts(second, hosts) == []


def test_controller_cache_is_made_owner_only_and_pruned_with_the_same_keep(emulator, tmp_path):
    cache = tmp_path / 'cache'
    cache.mkdir()
    os.chmod(str(cache), 0o755)
    inventory, dests = make_fleet(tmp_path, ['h1'])
    # The third newest export is withheld, so a window of three holds two downloadable ones.
    newest_two = [r for r in by_age(emulator)[:3] if r['canDownload']]
    assert len(newest_two) == 2

    first = play(emulator, tmp_path, inventory, backup_exports_download_on='controller',
                 backup_exports_select='all', backup_exports_keep=3)

    assert first.rc == 0, first.output[-4000:]
    assert stat.S_IMODE(os.stat(str(cache)).st_mode) == 0o700
    assert archives_in(cache) == sorted(archive_of(r) for r in newest_two)
    assert_holds_exactly(emulator, dests['h1'], newest_two)

    second = play(emulator, tmp_path, inventory, backup_exports_download_on='controller',
                  backup_exports_keep=1)

    assert second.rc == 0, second.output[-4000:]
    assert counts(emulator)['download'] == 0
    assert archives_in(cache) == [archive_of(newest_two[0])]
    assert manifest_of(cache) == {archive_of(newest_two[0]): hashlib.sha256(
        emulator.archive_bytes(newest_two[0]['id'])).hexdigest()}
    assert_holds_exactly(emulator, dests['h1'], newest_two[:1])


# --- 3. manifest --------------------------------------------------------------------------------

def test_manifest_is_not_recomputed_and_verify_manifest_names_an_altered_archive(
        emulator, tmp_path):
    inventory, dests = make_fleet(tmp_path, ['h1'])
    dest = dests['h1']
    wanted = [r for r in by_age(emulator)[:5] if r['canDownload']]
    first = play(emulator, tmp_path, inventory, backup_exports_select='all',
                 backup_exports_keep=5)
    assert first.rc == 0, first.output[-4000:]
    assert_holds_exactly(emulator, dest, wanted)
    manifest = (dest / MANIFEST).read_bytes()
    # The byte is in the encrypted data, far from the ZIP central directory, which is all the
    # fetch checks of an archive already present.
    altered = dest / archive_of(wanted[-1])
    data = bytearray(altered.read_bytes())
    data[len(data) // 3] ^= 0xFF
    altered.write_bytes(bytes(data))

    second = play(emulator, tmp_path, inventory, backup_exports_select='all',
                  backup_exports_keep=5)

    # The manifest kept the hash recorded at download: a listed archive is never re-read.
    assert second.rc == 0, second.output[-4000:]
    assert changed_hosts(second, ['h1']) == []
    assert (dest / MANIFEST).read_bytes() == manifest
    assert sha256sum_check(dest).returncode != 0

    third = play(emulator, tmp_path, inventory, backup_exports_select='all',
                 backup_exports_keep=5, backup_exports_verify_manifest=True)

    assert third.rc != 0
    assert failed_hosts(third, ['h1']) == ['h1']
    named = re.search(r'no longer match SHA256SUMS in (\S+): ([^"\n]+)', third.output)
    assert named, third.output[-4000:]
    assert named.group(1) == str(dest)
    assert named.group(2).split(', ') == [archive_of(wanted[-1])]


# --- 4. freshness alarm -------------------------------------------------------------------------

def test_newest_export_two_hours_old_passes_the_freshness_alarm(emulator, tmp_path):
    emulator.set_exports(newest_age_hours=2)
    inventory, dests = make_fleet(tmp_path, ['h1'])

    run = play(emulator, tmp_path, inventory, backup_exports_max_age_hours=26)

    assert run.rc == 0, run.output[-4000:]
    assert counts(emulator)['download'] == 1
    assert_holds_exactly(emulator, dests['h1'], [newest_downloadable(emulator)])


@pytest.mark.parametrize('mode, check', [('host', False), ('controller', False),
                                         ('controller', True)])
def test_months_old_newest_export_fails_before_any_download(emulator, tmp_path, mode, check):
    emulator.set_exports(newest_age_hours=24 * 90)
    newest = newest_downloadable(emulator)
    inventory, dests = make_fleet(tmp_path, ['h1', 'h2'])

    run = play(emulator, tmp_path, inventory, check=check, backup_exports_download_on=mode,
               backup_exports_max_age_hours=26)

    assert run.rc != 0
    assert 'h1' in failed_hosts(run, ['h1', 'h2'])
    assert counts(emulator)['download'] == 0
    assert counts(emulator)['list'] >= 1
    flat = unwrapped(run.output)
    assert unwrapped(newest['filename']) in flat
    assert unwrapped(newest['storageDate']) in flat
    assert unwrapped("automatic export seems to have stopped") in flat
    assert not any(dest.exists() for dest in dests.values())


def test_stale_action_warn_only_warns_and_stores_the_newest(emulator, tmp_path):
    emulator.set_exports(newest_age_hours=24 * 90)
    newest = newest_downloadable(emulator)
    inventory, dests = make_fleet(tmp_path, ['h1'])

    run = play(emulator, tmp_path, inventory, backup_exports_max_age_hours=26,
               backup_exports_stale_action='warn')

    assert run.rc == 0, run.output[-4000:]
    flat = unwrapped(run.output)
    assert re.search(r'\[WARNING\]:.*seemstohavestopped', flat)
    assert unwrapped(newest['storageDate']) in flat
    assert counts(emulator)['download'] == 1
    assert_holds_exactly(emulator, dests['h1'], [newest])


# --- 5. metrics ---------------------------------------------------------------------------------

def read_metrics(path):
    """{metric name: (value, labels)} of a textfile, through Prometheus' own parser."""
    parser = pytest.importorskip('prometheus_client.parser')
    found = {}
    for family in parser.text_string_to_metric_families(path.read_text()):
        (sample,) = family.samples
        found[sample.name] = (sample.value, sample.labels)
    return found


def test_metrics_file_describes_the_run_and_survives_failed_runs_unchanged(emulator, tmp_path):
    hosts = ['h1', 'h2']
    (tmp_path / 'textfile').mkdir()
    metrics = {h: tmp_path / 'textfile' / ('%s.prom' % h) for h in hosts}
    inventory, dests = make_fleet(
        tmp_path, hosts, {h: {'backup_exports_metrics_file': str(metrics[h])} for h in hosts})
    kept = [r for r in by_age(emulator)[:5] if r['canDownload']]
    newest = kept[0]
    mirror = dict(backup_exports_download_on='controller', backup_exports_select='all',
                  backup_exports_keep=5)
    started = time.time()

    first = play(emulator, tmp_path, inventory, **mirror)

    assert first.rc == 0, first.output[-4000:]
    values = {}
    for host in hosts:
        values[host] = read_metrics(metrics[host])
        label = {'dest': str(dests[host])}
        assert stat.S_IMODE(os.stat(str(metrics[host])).st_mode) == 0o644
        assert values[host]['secretserver_backup_archives'] == (len(kept), label)
        assert values[host]['secretserver_backup_archive_bytes'] == (
            len(emulator.archive_bytes(newest['id'])), label)
        stamp, labels = values[host]['secretserver_backup_newest_export_timestamp_seconds']
        assert labels == label
        assert stamp == pytest.approx(storage_timestamp(newest['storageDate']), abs=0.01)
        success, labels = values[host]['secretserver_backup_last_success_timestamp_seconds']
        assert labels == label and started <= success <= time.time()
    # Nothing half written beside the files the node exporter reads.
    assert sorted(os.listdir(str(tmp_path / 'textfile'))) == ['h1.prom', 'h2.prom']

    second = play(emulator, tmp_path, inventory, **mirror)

    assert second.rc == 0, second.output[-4000:]
    assert changed_hosts(second, hosts) == []
    for host in hosts:
        refreshed = read_metrics(metrics[host])
        assert refreshed['secretserver_backup_last_success_timestamp_seconds'][0] > \
            values[host]['secretserver_backup_last_success_timestamp_seconds'][0]
        assert refreshed['secretserver_backup_archives'] == values[host][
            'secretserver_backup_archives']
    written = {h: metrics[h].read_bytes() for h in hosts}

    denied = play(emulator, tmp_path, inventory, faults=[{'on': 'list', 'kind': 'status',
                                                          'code': 403}], **mirror)
    assert denied.rc != 0
    assert counts(emulator)['list'] == 1 and counts(emulator)['download'] == 0
    assert {h: metrics[h].read_bytes() for h in hosts} == written

    emulator.set_exports(newest_age_hours=24 * 90)
    stale = play(emulator, tmp_path, inventory, backup_exports_max_age_hours=26, **mirror)
    assert stale.rc != 0
    assert {h: metrics[h].read_bytes() for h in hosts} == written
