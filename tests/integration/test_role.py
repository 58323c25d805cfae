"""The backup_exports role through playbooks/backup.yml, as an operator runs it nightly."""

import hashlib
import os
import stat
import subprocess

import pytest

import support

PLAYBOOK = os.path.join(support.ROOT, 'playbooks', 'backup.yml')


def role_vars(emulator, dest, **extra):
    values = {'backup_exports_base_url': emulator.url, 'backup_exports_dest': str(dest),
              'backup_exports_username': 'backup', 'backup_exports_password': 'backup-password'}
    values.update(extra)
    return values


def newest_downloadable(emulator):
    records = sorted(emulator.records(), key=lambda r: (r['storageDate'], r['id']), reverse=True)
    return next(r for r in records if r['canDownload'])


def archives_in(dest):
    return sorted(n for n in os.listdir(str(dest)) if n.endswith('.zip'))


def test_first_run_stores_archive_second_run_changes_nothing_and_downloads_nothing(
        emulator, tmp_path):
    dest = tmp_path / 'backups'
    newest = newest_downloadable(emulator)

    first = support.run_playbook(PLAYBOOK, tmp_path, role_vars(emulator, dest))
    assert first.rc == 0, first.output[-3000:]
    assert first.recap()['changed'] >= 1
    name = newest['filename'] + '.zip'
    served = emulator.archive_bytes(newest['id'])
    assert (dest / name).read_bytes() == served
    assert stat.S_IMODE(os.stat(str(dest / name)).st_mode) == 0o600
    assert not [n for n in os.listdir(str(dest)) if n.startswith('.')]
    emulator.reset()

    second = support.run_playbook(PLAYBOOK, tmp_path, role_vars(emulator, dest))

    assert second.rc == 0, second.output[-3000:]
    assert second.recap()['changed'] == 0
    counts = emulator.state()['counts']
    assert (counts['token'], counts['download']) == (1, 0)
    assert counts['list'] >= 1


def test_manifest_passes_sha256sum_check(emulator, tmp_path):
    dest = tmp_path / 'backups'
    run = support.run_playbook(PLAYBOOK, tmp_path, role_vars(emulator, dest))
    assert run.rc == 0, run.output[-3000:]

    check = subprocess.run(['sha256sum', '-c', 'SHA256SUMS'], cwd=str(dest),
                           capture_output=True, text=True, check=False)

    assert check.returncode == 0, check.stdout + check.stderr
    assert archives_in(dest)[0] + ': OK' in check.stdout


def test_keep_prunes_only_old_archives_and_never_other_files(emulator, tmp_path):
    dest = tmp_path / 'backups'
    dest.mkdir(mode=0o700)
    old = ['secret-server-export-2019010%d000000.zip' % day for day in range(1, 5)]
    for name in old:
        (dest / name).write_bytes(b'old archive ' + name.encode())
    keepers = ['notes.txt', 'other.zip', 'secret-server-export-notes.txt']
    for name in keepers:
        (dest / name).write_bytes(b'not an archive')

    run = support.run_playbook(PLAYBOOK, tmp_path,
                               role_vars(emulator, dest, backup_exports_keep=3))

    assert run.rc == 0, run.output[-3000:]
    newest = newest_downloadable(emulator)['filename'] + '.zip'
    assert archives_in(dest) == sorted([newest, old[3], old[2]] + ['other.zip'])
    for name in keepers:
        assert (dest / name).read_bytes() == b'not an archive'


def test_result_fact_reports_archive_hash_and_pruned(emulator, tmp_path):
    dest = tmp_path / 'backups'
    dest.mkdir(mode=0o700)
    (dest / 'secret-server-export-20190101000000.zip').write_bytes(b'old')
    report = tmp_path / 'report.yml'
    playbook = tmp_path / 'report.yml.play'
    playbook.write_text(
        '- hosts: localhost\n  gather_facts: false\n  roles:\n'
        '    - secretserver.backup.backup_exports\n  tasks:\n'
        '    - ansible.builtin.copy:\n        dest: %s\n'
        '        content: "{{ backup_exports_result | to_nice_json }}"\n' % report)

    run = support.run_playbook(str(playbook), tmp_path,
                               role_vars(emulator, dest, backup_exports_keep=1))

    assert run.rc == 0, run.output[-3000:]
    import json
    fact = json.loads(report.read_text())
    newest = newest_downloadable(emulator)
    served = emulator.archive_bytes(newest['id'])
    assert fact['archive'] == str(dest / (newest['filename'] + '.zip'))
    assert fact['sha256'] == hashlib.sha256(served).hexdigest()
    assert fact['downloaded'] is True
    assert fact['pruned'] == ['secret-server-export-20190101000000.zip']
    assert fact['exports_total'] == len(emulator.records())


def test_warns_when_newest_export_cannot_be_downloaded(emulator, tmp_path):
    emulator.set_exports(count=5, newest_not_downloadable=True)

    run = support.run_playbook(PLAYBOOK, tmp_path, role_vars(emulator, tmp_path / 'b'))

    assert run.rc == 0, run.output[-3000:]
    assert 'may not download' in run.output


def test_tenant_refusal_fails_plainly_and_keeps_the_last_archive(emulator, tmp_path):
    dest = tmp_path / 'backups'
    assert support.run_playbook(PLAYBOOK, tmp_path, role_vars(emulator, dest)).rc == 0
    before = support.files_in(str(dest))

    run = support.run_playbook(PLAYBOOK, tmp_path, role_vars(
        emulator, dest, backup_exports_password='not-the-password'))

    assert run.rc != 0
    assert 'refused the password grant' in run.output
    assert 'not-the-password' not in run.output
    assert support.files_in(str(dest)) == before


def test_check_mode_downloads_and_writes_nothing(emulator, tmp_path):
    dest = tmp_path / 'backups'

    run = support.run_playbook(PLAYBOOK, tmp_path, role_vars(emulator, dest), check=True)

    assert run.rc == 0, run.output[-3000:]
    assert not dest.exists()
    assert emulator.state()['counts']['download'] == 0


@pytest.mark.parametrize('missing', ['backup_exports_base_url'])
def test_role_argument_spec_rejects_missing_required_variable(emulator, tmp_path, missing):
    values = role_vars(emulator, tmp_path / 'b')
    del values[missing]

    run = support.run_playbook(PLAYBOOK, tmp_path, values)

    assert run.rc != 0
    assert missing in run.output
