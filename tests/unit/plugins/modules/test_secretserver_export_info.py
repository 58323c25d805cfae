"""secretserver_export_info run as Ansible runs it, against the emulator."""

from support import USER, run_module


def info(emulator, tmp_path, check_mode=False, **args):
    params = dict(USER, base_url=emulator.url)
    params.update(args)
    return run_module('secretserver_export_info', params, tmp_path, check_mode=check_mode)


def test_returns_every_record_of_a_tenant_holding_more_than_one_page(emulator, tmp_path):
    emulator.set_exports(count=37)
    emulator.configure(take_cap=10)

    run = info(emulator, tmp_path)

    assert not run.failed, run
    assert run.result['total'] == 37 == len(run.result['exports'])
    served = {r['id'] for r in emulator.records()}
    assert {e['id'] for e in run.result['exports']} == served
    assert emulator.state()['counts']['list'] == 4


def test_exports_are_newest_first_with_documented_keys_and_latest(emulator, tmp_path):
    run = info(emulator, tmp_path)

    exports = run.result['exports']
    assert [e['storage_timestamp'] for e in exports] == \
        sorted((e['storage_timestamp'] for e in exports), reverse=True)
    for export in exports:
        assert set(export) == {'id', 'auto_export_configuration_id', 'storage_date',
                               'storage_timestamp', 'filename', 'archive_name', 'can_download'}
        assert export['archive_name'] == export['filename'] + '.zip'
    assert run.result['latest'] == next(e for e in exports if e['can_download'])
    assert run.result['newest'] == exports[0]
    assert run.result['changed'] is False


def test_storage_date_is_returned_as_the_server_sent_it(emulator, tmp_path):
    sent = {r['id']: r['storageDate'] for r in emulator.records()}

    run = info(emulator, tmp_path)

    assert {e['id']: e['storage_date'] for e in run.result['exports']} == sent
    assert any(len(d.split('.')[-1]) == 7 for d in sent.values() if '.' in d)
    assert any(len(d.split('.')[-1]) == 2 for d in sent.values() if '.' in d)


def test_configuration_id_lists_only_that_configuration(emulator, tmp_path):
    run = info(emulator, tmp_path, configuration_id=1)

    assert run.result['total'] > 0
    assert all(e['auto_export_configuration_id'] == 1 for e in run.result['exports'])


def test_check_mode_lists_the_same(emulator, tmp_path):
    run = info(emulator, tmp_path, check_mode=True)

    assert not run.failed and run.result['total'] == len(emulator.records())


def test_credentials_come_from_tss_environment_variables(emulator, tmp_path):
    run = run_module('secretserver_export_info', {}, tmp_path, env={
        'TSS_BASE_URL': emulator.url, 'TSS_USERNAME': 'backup',
        'TSS_PASSWORD': 'backup-password'})

    assert not run.failed, run
    assert run.result['total'] == len(emulator.records())
    assert 'backup-password' not in run.stdout


def test_no_credentials_fail_naming_the_options(emulator, tmp_path):
    run = run_module('secretserver_export_info', {'base_url': emulator.url}, tmp_path)

    assert run.failed
    assert 'username and password' in run.result['msg'] and 'token' in run.result['msg']


def test_permission_refusal_is_a_clear_failure_without_traceback(emulator, tmp_path):
    run = info(emulator, tmp_path, username='nobody', password='nobody-password')

    assert run.failed
    assert 'View Automatic Export' in run.result['msg']
    assert run.result['error']['kind'] == 'permission'
    assert 'Traceback' not in run.stdout + run.stderr
