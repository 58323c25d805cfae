#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: secretserver_archive_rotate
short_description: Keep the newest export archives in a directory, with a checksum manifest
version_added: 1.0.0
description:
  - Looks after a directory of Secret Server export archives stored by
    M(secretserver.backup.secretserver_export_fetch) or copied there. It removes all but the newest
    O(keep), keeps a C(SHA256SUMS) manifest listing exactly the archives present, and can write
    a Prometheus textfile-collector file describing the directory.
  - Only files that are export archives by name (C(secret-server-export-*.zip)) are ever
    removed or listed. Nothing else in the directory is touched.
  - Talks to no server and needs no library beyond Python, so it runs on hosts with no route to
    the tenant.
author:
  - secretserver.backup contributors (!UNKNOWN)
options:
  path:
    description:
      - Absolute path of the directory holding the archives.
    type: path
    required: true
  keep:
    description:
      - How many archives to keep, newest first by the time stamp in their names. V(0) keeps all.
    type: int
    default: 7
  protect:
    description:
      - Archive names never removed, whatever their age (for example the one just stored).
    type: list
    elements: str
    default: []
  manifest:
    description:
      - Keep C(SHA256SUMS) in O(path), in the format C(sha256sum -c) reads, listing exactly the
        archives present after the run. It is replaced atomically.
      - An archive the manifest already lists, or whose hash is given in O(checksums), is not
        read again; only archives with no known hash are hashed.
    type: bool
    default: true
  checksums:
    description:
      - SHA-256 hashes already known, as a dict of archive name to hex digest; for example the
        C(archive_name) and C(sha256) of each entry of
        RV(secretserver.backup.secretserver_export_fetch#module:archives) of the run that stored
        them.
    type: dict
    default: {}
  verify_manifest:
    description:
      - Re-hash every archive the manifest lists and fail, naming each archive whose bytes no
        longer match. This reads every archive whole.
    type: bool
    default: false
  metrics_file:
    description:
      - Write a Prometheus textfile-collector file here (mode C(0644), replaced atomically) with
        C(secretserver_backup_last_success_timestamp_seconds),
        C(secretserver_backup_newest_export_timestamp_seconds), C(secretserver_backup_archives)
        and C(secretserver_backup_archive_bytes), labelled with the directory.
      - Refreshing it is bookkeeping, so it does not make the task report a change.
    type: path
  newest_export_timestamp:
    description:
      - Storage time (seconds since the epoch, UTC) of the newest export in the tenant's storage,
        for the metrics file. See RV(secretserver.backup.secretserver_export_fetch#module:latest).
    type: float
attributes:
  check_mode:
    support: full
    description: Reports what it would remove; removes and writes nothing.
  diff_mode:
    support: none
    description: Reports the names it removes in RV(pruned), not as a diff.
  platform:
    platforms: posix
    support: full
    description: Runs on any POSIX host with Python 3.8 or newer; needs no extra library.
  action_group:
    support: none
    membership: []
    description: Not in C(group/secretserver.backup.secretserver) of C(module_defaults); it takes
      no connection options.
seealso:
  - module: secretserver.backup.secretserver_export_fetch
notes:
  - The metrics file holds no secret, so it is world-readable for the node exporter.
'''

EXAMPLES = r'''
- name: Keep seven archives and a manifest
  secretserver.backup.secretserver_archive_rotate:
    path: /var/backups/secretserver
    keep: 7

- name: Prove the archives still match the manifest, and export metrics
  secretserver.backup.secretserver_archive_rotate:
    path: /var/backups/secretserver
    verify_manifest: true
    metrics_file: /var/lib/node_exporter/textfile_collector/secretserver_backup.prom
    newest_export_timestamp: "{{ fetched.latest.storage_timestamp }}"
'''

RETURN = r'''
archives:
  description: Names of the archives in O(path) after the run, newest first.
  returned: always
  type: list
  elements: str
pruned:
  description: Names of the archives removed (or that would be, in check mode).
  returned: always
  type: list
  elements: str
manifest_changed:
  description: Whether C(SHA256SUMS) was (or would be) rewritten.
  returned: always
  type: bool
mismatched:
  description: With O(verify_manifest), archives whose bytes do not match the manifest.
  returned: always
  type: list
  elements: str
metrics_file:
  description: Path of the metrics file written, or null.
  returned: always
  type: str
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.secretserver.backup.plugins.module_utils import archive as store
from ansible_collections.secretserver.backup.plugins.module_utils.errors import (
    ArchiveError,
    SecretServerError,
)


def metrics(path, archives, newest_export_timestamp):
    newest_bytes = os.path.getsize(os.path.join(path, archives[0])) if archives else 0
    values = [
        ('secretserver_backup_last_success_timestamp_seconds',
         'When the last backup run that succeeded ended.', 'gauge', round(time.time(), 3)),
        ('secretserver_backup_archives', 'Export archives kept in the directory.', 'gauge',
         len(archives)),
        ('secretserver_backup_archive_bytes', 'Size of the newest archive kept.', 'gauge',
         newest_bytes),
    ]
    if newest_export_timestamp is not None:
        values.insert(1, ('secretserver_backup_newest_export_timestamp_seconds',
                          'Storage time of the newest export on the tenant (UTC).', 'gauge',
                          newest_export_timestamp))
    return values


def rotate(module):
    params = module.params
    path = params['path']
    if module.check_mode and not os.path.lexists(path):
        # A check run before the first real one: the task that creates the directory did not.
        return dict(changed=False, pruned=[], archives=[], manifest_changed=False,
                    mismatched=[], metrics_file=None)
    if not os.path.isdir(path) or os.path.islink(path):
        raise ArchiveError('%s is not a directory' % path,
                           hint='Give the directory the archives are stored in')
    metrics_dir = os.path.dirname(params['metrics_file'] or '')
    if params['metrics_file'] and not os.path.isdir(metrics_dir):
        # Checked before pruning, so a wrong path changes nothing.
        raise ArchiveError('the directory of metrics_file, %s, does not exist' % metrics_dir,
                           hint='Create it (the node exporter textfile collector directory) or '
                                'fix metrics_file (backup_exports_metrics_file in the role)')
    present = store.list_archives(path)
    protect = set(params['protect'])
    keep = params['keep']
    kept = [n for i, n in enumerate(present) if keep <= 0 or i < keep or n in protect]
    doomed = [n for n in present if n not in kept]
    result = dict(changed=bool(doomed), pruned=doomed, archives=kept, manifest_changed=False,
                  mismatched=[], metrics_file=None)
    if module.check_mode:
        return result

    store.prune(path, keep, protect=protect)
    if params['manifest']:
        result['manifest_changed'] = store.sync_manifest(path, known=params['checksums'])
        result['changed'] = result['changed'] or result['manifest_changed']
    if params['verify_manifest']:
        result['mismatched'] = store.verify_manifest(path)
        if result['mismatched']:
            module.fail_json(msg='these archives no longer match SHA256SUMS in %s: %s'
                                 % (path, ', '.join(result['mismatched'])), **result)
    if params['metrics_file']:
        store.write_metrics(params['metrics_file'],
                            metrics(path, kept, params['newest_export_timestamp']), {'dest': path})
        result['metrics_file'] = params['metrics_file']
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', required=True),
            keep=dict(type='int', default=7),
            protect=dict(type='list', elements='str', default=[]),
            manifest=dict(type='bool', default=True),
            checksums=dict(type='dict', default={}),
            verify_manifest=dict(type='bool', default=False),
            metrics_file=dict(type='path'),
            newest_export_timestamp=dict(type='float'),
        ),
        supports_check_mode=True,
    )
    if module.params['keep'] < 0:
        module.fail_json(msg='keep must be 0 (keep all) or more, not %d' % module.params['keep'])

    try:
        result = rotate(module)
    except SecretServerError as error:
        module.fail_json(msg=str(error), **error.to_result())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
