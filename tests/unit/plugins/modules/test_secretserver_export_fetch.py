"""secretserver_export_fetch run as Ansible runs it on a managed host, against the emulator."""

import hashlib
import os
import stat

import pytest

from support import USER, files_in, run_module, warnings_of


def fetch(emulator, tmp_path, dest, check_mode=False, **args):
    params = dict(USER, base_url=emulator.url, dest=str(dest))
    params.update(args)
    return run_module('secretserver_export_fetch', params, tmp_path, check_mode=check_mode)


def newest_downloadable(emulator):
    records = sorted(emulator.records(), key=lambda r: (r['storageDate'], r['id']), reverse=True)
    return next(r for r in records if r['canDownload'])


def test_first_run_stores_newest_downloadable_archive_byte_identical_owner_only(
        emulator, tmp_path):
    dest = tmp_path / 'backups'
    newest = newest_downloadable(emulator)

    run = fetch(emulator, tmp_path, dest)

    assert not run.failed, run
    name = newest['filename'] + '.zip'
    served = emulator.archive_bytes(newest['id'])
    assert files_in(str(dest)) == {name: served}
    assert stat.S_IMODE(os.stat(str(dest / name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(dest)).st_mode) == 0o700
    assert run.result['changed'] and run.result['downloaded']
    assert run.result['sha256'] == hashlib.sha256(served).hexdigest()
    assert run.result['size'] == len(served)
    assert run.result['dest'] == str(dest / name)
    assert run.result['export']['id'] == newest['id']


def test_second_run_downloads_nothing_and_reports_no_change(emulator, tmp_path):
    dest = tmp_path / 'backups'
    assert not fetch(emulator, tmp_path, dest).failed
    before = files_in(str(dest))
    emulator.reset()

    run = fetch(emulator, tmp_path, dest)

    assert not run.failed, run
    assert run.result['changed'] is False and run.result['downloaded'] is False
    assert emulator.state()['counts']['download'] == 0
    assert files_in(str(dest)) == before


def test_present_archive_is_checked_by_central_directory_and_damaged_one_replaced(
        emulator, tmp_path):
    dest = tmp_path / 'backups'
    dest.mkdir(mode=0o700)
    newest = newest_downloadable(emulator)
    (dest / (newest['filename'] + '.zip')).write_bytes(b'not a zip at all')

    run = fetch(emulator, tmp_path, dest)

    assert not run.failed, run
    assert run.result['downloaded'] is True
    assert any('not a readable export archive' in w for w in warnings_of(run.result))
    assert files_in(str(dest))[newest['filename'] + '.zip'] == \
        emulator.archive_bytes(newest['id'])


def test_force_downloads_again(emulator, tmp_path):
    dest = tmp_path / 'backups'
    assert not fetch(emulator, tmp_path, dest).failed
    emulator.reset()

    run = fetch(emulator, tmp_path, dest, force=True)

    assert run.result['downloaded'] is True
    assert emulator.state()['counts']['download'] == 1


def test_check_mode_reports_would_download_and_writes_nothing(emulator, tmp_path):
    dest = tmp_path / 'backups'

    run = fetch(emulator, tmp_path, dest, check_mode=True)

    assert not run.failed, run
    assert run.result['changed'] is True and run.result['downloaded'] is False
    assert not dest.exists()
    assert emulator.state()['counts']['download'] == 0


def test_diff_mode_shows_archive_going_from_absent_to_present(emulator, tmp_path):
    dest = tmp_path / 'backups'
    params = dict(USER, base_url=emulator.url, dest=str(dest))
    run = run_module('secretserver_export_fetch', params, tmp_path, diff=True)

    (diff,) = run.result['diff']
    assert diff['before']['state'] == 'absent' and diff['after']['state'] == 'present'
    assert diff['after']['path'] == run.result['dest']


def test_export_id_selects_that_export(emulator, tmp_path):
    older = [r for r in emulator.records() if r['canDownload']][-1]

    run = fetch(emulator, tmp_path, tmp_path / 'b', export_id=older['id'])

    assert run.result['export']['id'] == older['id']
    assert files_in(str(tmp_path / 'b')) == {
        older['filename'] + '.zip': emulator.archive_bytes(older['id'])}


def test_export_id_not_in_storage_fails_clearly_and_writes_nothing(emulator, tmp_path):
    run = fetch(emulator, tmp_path, tmp_path / 'b', export_id=987654)

    assert run.failed
    assert 'export 987654 is not in the storage list' in run.result['msg']
    assert not (tmp_path / 'b').exists()


def test_export_id_the_account_may_not_download_fails_clearly(emulator, tmp_path):
    blocked = next(r for r in emulator.records() if not r['canDownload'])

    run = fetch(emulator, tmp_path, tmp_path / 'b', export_id=blocked['id'])

    assert run.failed
    assert 'may not download' in run.result['msg']
    assert emulator.state()['counts']['download'] == 0


def test_newest_not_downloadable_warns_and_stores_newest_downloadable(emulator, tmp_path):
    emulator.set_exports(count=4, newest_not_downloadable=True)
    newest = sorted(emulator.records(), key=lambda r: r['storageDate'])[-1]

    run = fetch(emulator, tmp_path, tmp_path / 'b')

    assert not run.failed, run
    assert any(str(newest['id']) in w and 'may not' in w for w in warnings_of(run.result))
    assert run.result['export']['id'] != newest['id']


@pytest.mark.parametrize('mode', ['0640', '0400'])
def test_mode_option_applies_to_the_stored_archive(emulator, tmp_path, mode):
    run = fetch(emulator, tmp_path, tmp_path / 'b', mode=mode)

    assert stat.S_IMODE(os.stat(run.result['dest']).st_mode) == int(mode, 8)


def test_owner_and_group_apply_to_the_stored_archive(emulator, tmp_path):
    if os.geteuid() != 0:
        pytest.skip('changing the owner needs root')
    run = fetch(emulator, tmp_path, tmp_path / 'b', owner='nobody', group='nogroup')

    info = os.stat(run.result['dest'])
    import grp
    import pwd
    assert pwd.getpwuid(info.st_uid).pw_name == 'nobody'
    assert grp.getgrgid(info.st_gid).gr_name == 'nogroup'
    assert stat.S_IMODE(info.st_mode) == 0o600


def test_created_dest_is_0700_whatever_the_umask(emulator, tmp_path):
    old = os.umask(0)
    try:
        run = fetch(emulator, tmp_path, tmp_path / 'deep' / 'b')
    finally:
        os.umask(old)

    assert not run.failed, run
    assert stat.S_IMODE(os.stat(str(tmp_path / 'deep' / 'b')).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(run.result['dest']).st_mode) == 0o600
