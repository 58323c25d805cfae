# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Export records: checking what the server sent and shaping it into the documented result keys.

The server is not trusted: every record is checked for the fields and types the API promises
before a module decides anything from it, and the result keys never change with the server.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import calendar
import re

from ansible_collections.secretserver.backup.plugins.module_utils.errors import ProtocolError


# .NET writes local-less timestamps with 0 to 7 fractional digits; datetime.fromisoformat
# before Python 3.11 accepts only 3 or 6 of them, so the date is read by hand.
_STORAGE_DATE = re.compile(
    r'^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?(Z|[+-]\d{2}:?\d{2})?$')


def storage_timestamp(value):
    """Seconds since the epoch for a storage date, read as UTC when it names no zone."""
    match = _STORAGE_DATE.match(value) if isinstance(value, str) else None
    if not match:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    fraction = match.group(7)
    if fraction:
        seconds += int(fraction) / 10.0 ** len(fraction)
    return seconds - _zone_offset(match.group(8))


def _zone_offset(zone):
    if not zone or zone == 'Z':
        return 0
    digits = zone[1:].replace(':', '')
    offset = int(digits[:2]) * 3600 + int(digits[2:]) * 60
    return -offset if zone[0] == '-' else offset


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def normalize_record(raw, url):
    """One record in result form, or ProtocolError naming the record and what is wrong."""
    if not isinstance(raw, dict):
        raise ProtocolError('the storage list holds an entry that is not an object: %s'
                            % _show(raw), url=url)
    export_id = raw.get('id')
    if not _is_int(export_id) or export_id < 0:
        raise ProtocolError('the storage list holds an export whose id is not a whole number: %s'
                            % _show(export_id), url=url)
    problems = []
    config_id = raw.get('autoExportConfigurationId')
    if config_id is not None and not _is_int(config_id):
        problems.append('autoExportConfigurationId %s is not a whole number' % _show(config_id))
    timestamp = storage_timestamp(raw.get('storageDate'))
    if timestamp is None:
        problems.append('storageDate %s is not a date' % _show(raw.get('storageDate')))
    if not isinstance(raw.get('filename'), str):
        problems.append('filename %s is not a string' % _show(raw.get('filename')))
    if not isinstance(raw.get('canDownload'), bool):
        problems.append('canDownload %s is not true or false' % _show(raw.get('canDownload')))
    if problems:
        raise ProtocolError('export %d in the storage list is malformed: %s'
                            % (export_id, '; '.join(problems)), url=url)
    return {
        'id': export_id,
        'auto_export_configuration_id': config_id,
        'storage_date': raw['storageDate'],
        'storage_timestamp': timestamp,
        'filename': raw['filename'],
        'archive_name': raw['filename'] + '.zip',
        'can_download': raw['canDownload'],
    }


def normalize_records(raw_records, url):
    """All records, checked, without duplicates (pages can overlap), newest first."""
    by_id = {}
    for raw in raw_records:
        record = normalize_record(raw, url)
        by_id[record['id']] = record
    return sorted(by_id.values(), key=lambda r: (r['storage_timestamp'], r['id']), reverse=True)


def latest_downloadable(records):
    """The newest record the caller may download, or None."""
    for record in records:
        if record['can_download']:
            return record
    return None


def _show(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'
