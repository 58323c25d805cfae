# -*- coding: utf-8 -*-
"""Checks of what the server sends in the storage list, and the result shape built from it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import calendar

import pytest

from ansible_collections.secretserver.backup.plugins.module_utils.errors import ProtocolError
from ansible_collections.secretserver.backup.plugins.module_utils.records import (
    latest_downloadable,
    normalize_records,
    storage_timestamp,
)

URL = 'https://tenant.example/api/v1/configuration/auto-export-storage'
BASE = calendar.timegm((2021, 7, 1, 7, 0, 2, 0, 0, 0))


def record(export_id, date, can_download=True, filename=None):
    return {'id': export_id, 'autoExportConfigurationId': 1, 'storageDate': date,
            'filename': filename or 'secret-server-export-%d' % export_id,
            'canDownload': can_download}


@pytest.mark.parametrize('value, expected', [
    ('2021-07-01T07:00:02', BASE),
    ('2021-07-01T07:00:02.27', BASE + 0.27),
    ('2021-07-01T07:00:02.2700000', BASE + 0.27),
    ('2021-07-01T07:00:02.1234567', BASE + 0.1234567),
    ('2021-07-01T07:00:02.5Z', BASE + 0.5),
    ('2021-07-01T09:00:02+02:00', BASE),
])
def test_storage_dates_read_any_fraction_as_utc(value, expected):
    assert storage_timestamp(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize('value', [None, 12, '', 'yesterday', '2021-13-01T00:00:00',
                                   '2021-07-01T07:00:02.12345678', '2021-07-01'])
def test_storage_dates_that_are_not_dates_give_none(value):
    assert storage_timestamp(value) is None


def test_records_are_sorted_newest_first_ties_by_id_not_by_server_order():
    raw = [record(5, '2021-07-01T07:00:02.27'), record(9, '2021-07-03T07:00:02'),
           record(2, '2021-07-02T07:00:02.1234567'), record(7, '2021-07-03T07:00:02')]
    ids = [r['id'] for r in normalize_records(raw, URL)]
    assert ids == [9, 7, 2, 5]


def test_result_keys_are_snake_case_with_archive_name():
    (result,) = normalize_records([record(123, '2021-07-01T07:00:02.27')], URL)
    assert result == {
        'id': 123, 'auto_export_configuration_id': 1, 'storage_date': '2021-07-01T07:00:02.27',
        'storage_timestamp': pytest.approx(BASE + 0.27), 'filename': 'secret-server-export-123',
        'archive_name': 'secret-server-export-123.zip', 'can_download': True}


def test_records_repeated_across_pages_are_listed_once():
    raw = [record(1, '2021-07-01T07:00:02'), record(1, '2021-07-01T07:00:02')]
    assert len(normalize_records(raw, URL)) == 1


def test_latest_downloadable_skips_what_the_account_cannot_download():
    records = normalize_records([record(3, '2021-07-03T00:00:00', can_download=False),
                                 record(2, '2021-07-02T00:00:00')], URL)
    assert latest_downloadable(records)['id'] == 2
    assert latest_downloadable(records[:1]) is None


@pytest.mark.parametrize('bad, needle', [
    ('not a record', 'not an object'),
    ({'id': '12/../../x', 'storageDate': '2021-07-01T07:00:02', 'filename': 'a',
      'canDownload': True}, 'not a whole number'),
    ({'id': True, 'storageDate': '2021-07-01T07:00:02', 'filename': 'a', 'canDownload': True},
     'not a whole number'),
    ({'id': 4, 'storageDate': 'soon', 'filename': 'a', 'canDownload': True}, 'storageDate'),
    ({'id': 4, 'storageDate': '2021-07-01T07:00:02', 'filename': 7, 'canDownload': True},
     'filename'),
    ({'id': 4, 'storageDate': '2021-07-01T07:00:02', 'filename': 'a', 'canDownload': 'yes'},
     'canDownload'),
    ({'id': 4, 'storageDate': '2021-07-01T07:00:02', 'filename': 'a'}, 'canDownload'),
])
def test_malformed_records_fail_naming_the_field_and_the_url(bad, needle):
    with pytest.raises(ProtocolError) as caught:
        normalize_records([bad], URL)
    assert needle in str(caught.value)
    assert URL in str(caught.value)
