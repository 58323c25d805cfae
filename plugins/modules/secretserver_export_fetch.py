#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: secretserver_export_fetch
short_description: Store a Secret Server Cloud automatic secret export as an owner-only archive
version_added: 1.0.0
description:
  - Downloads an automatic secret export of a Secret Server Cloud tenant and stores it as
    C(<dest>/<filename>.zip), the AES-encrypted ZIP archive the tenant made.
  - Idempotent by file name. When the archive is already in O(dest) (and, with O(verify), is a
    readable export archive) nothing is downloaded and the task reports no change.
  - The download streams into a temporary file inside O(dest), created owner-only, hashed
    (SHA-256) while it is written, checked against C(Content-Length) and, with O(verify), checked
    as a ZIP holding C(<filename>.xml), before it takes its final name in one atomic step. On any
    failure the temporary file is removed and an archive already there is left as it was.
  - With O(export_password) the archive is also opened before it takes its final name, proving
    it restores. See O(export_password).
  - Signs in once and reads the storage list once per run, whatever O(select) fetches.
author:
  - secretserver.backup contributors (!UNKNOWN)
options:
  dest:
    description:
      - Absolute path of the directory the archive is stored in. Created with mode C(0700) when
        missing. It must not be a symbolic link.
    type: path
    required: true
  export_id:
    description:
      - Id of the export to store (see M(secretserver.backup.secretserver_export_info)).
      - When omitted, the newest export this account may download, within O(configuration_id)
        when set.
      - Mutually exclusive with O(select=all).
    type: int
  configuration_id:
    description:
      - Consider only the exports of this automatic export configuration.
    type: int
  select:
    description:
      - V(latest) stores one export, O(export_id) or the newest downloadable one.
      - V(all) stores every downloadable export among the newest O(limit) that is not already in
        O(dest), so a host that missed nights catches up. Exports in that window the account may
        not download are named in a warning.
    type: str
    choices: [latest, all]
    default: latest
  limit:
    description:
      - With O(select=all), how many of the newest exports to consider; V(0) considers all.
    type: int
    default: 0
  force:
    description:
      - Download and replace the archive even when it is already in O(dest).
    type: bool
    default: false
  verify:
    description:
      - Check that the download is a ZIP whose central directory is readable and holds
        C(<filename>.xml) before storing it, and that an archive already present passes the
        same check (a damaged one is downloaded again). The entries are encrypted, so this
        does not decrypt anything; O(export_password) does.
      - Checking an archive already present reads only its central directory.
    type: bool
    default: true
  export_password:
    description:
      - The Export Password of the automatic export configuration. When set, each downloaded
        archive is also opened before it is stored - the AES password verifier and
        authentication code of C(<filename>.xml) are checked, and the XML is decrypted,
        inflated and parsed as a stream in memory, never written anywhere - and the counts of
        secrets and folders are returned in RV(contents).
      - A wrong password and a damaged archive fail with different messages and store nothing.
      - Needs the Python library C(pyzipper) on the host that runs the module.
      - If not set, the value of the E(TSS_EXPORT_PASSWORD) environment variable is used.
    type: str
  reverify:
    description:
      - With O(export_password), also open archives that are already present (this reads them
        whole). Without it, only new downloads are opened.
    type: bool
    default: false
  max_age_hours:
    description:
      - When the newest downloadable export is older than this many hours, the tenant's automatic
        export seems to have stopped; see O(stale_action). V(0) turns the check off.
      - Storage dates carry no time zone and are read as UTC.
      - The check runs before any download, and in check mode too.
    type: float
    default: 0
  stale_action:
    description:
      - What a stale newest export (see O(max_age_hours)) does. V(fail) fails the task before any
        download; V(warn) warns and goes on.
    type: str
    choices: [fail, warn]
    default: fail
  mode:
    description:
      - Permissions of the stored archive. The temporary file is owner-only from its first byte
        whatever this says; the archive gets this mode once it has its final name.
      - Defaults to C(0600). Quote it in YAML (V("0600")).
    type: raw
extends_documentation_fragment:
  - secretserver.backup.connection
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    description: Lists the storage and reports whether it would download; downloads and writes
      nothing.
  diff_mode:
    support: full
    description: Shows the archive path going from absent to present.
  platform:
    platforms: posix
    support: full
    description: Runs on any POSIX host with Python 3.8 or newer and requests.
  action_group:
    support: full
    membership:
      - secretserver.backup.secretserver
    description: Use C(group/secretserver.backup.secretserver) in C(module_defaults).
seealso:
  - module: secretserver.backup.secretserver_export_info
  - module: secretserver.backup.secretserver_archive_rotate
notes:
  - The server-provided file name must be a plain base name; anything else (a path, a leading
    dot, control characters, more than 251 bytes) fails, naming the export id, and writes nothing.
  - Two runs storing the same export into the same O(dest) at the same time end with one intact
    archive; the later one reports it as already present.
  - A temporary file left by a run that was killed (C(.<name>.zip.part-*)) is removed by the next
    run and never taken for an archive.
  - RV(sha256) of an archive already present comes from the C(SHA256SUMS) manifest of O(dest)
    when it lists the archive (see M(secretserver.backup.secretserver_archive_rotate)); the
    archive itself is not read again to compute it.
'''

EXAMPLES = r'''
- name: Store the newest export the account may download
  secretserver.backup.secretserver_export_fetch:
    base_url: https://mytenant.secretservercloud.com
    username: backup-svc
    password: "{{ vault_secretserver_password }}"
    dest: /var/backups/secretserver
  register: fetched

- name: Store one export, by id, and prove it opens with the export password
  secretserver.backup.secretserver_export_fetch:
    base_url: https://mytenant.secretservercloud.com
    dest: /var/backups/secretserver
    export_id: 123
    export_password: "{{ vault_export_password }}"

- name: Catch up on every missed export among the newest seven
  secretserver.backup.secretserver_export_fetch:
    base_url: https://mytenant.secretservercloud.com
    dest: /var/backups/secretserver
    select: all
    limit: 7
    max_age_hours: 26
'''

RETURN = r'''
dest:
  description: Path of the archive (for O(select=all), of the newest one).
  returned: when an export was selected
  type: str
  sample: /var/backups/secretserver/secret-server-export-20210701070002.zip
export:
  description: The export record (see M(secretserver.backup.secretserver_export_info)).
  returned: when an export was selected
  type: dict
size:
  description: Size of the archive in bytes.
  returned: when an export was selected
  type: int
  sample: 52428
sha256:
  description: SHA-256 of the archive, computed while downloading, or read from the C(SHA256SUMS)
    manifest for an archive already present; null when neither is known.
  returned: when an export was selected
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
downloaded:
  description: Whether archive bytes were downloaded in this run (false in check mode).
  returned: always
  type: bool
contents:
  description: Secrets and folders counted in the export XML, with O(export_password).
  returned: when the archive was opened
  type: dict
  sample: {secrets: 120, folders: 14}
archives:
  description: One entry per selected export, newest first.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Path of the archive.
      type: str
    archive_name:
      description: File name of the archive in O(dest).
      type: str
    export:
      description: The export record.
      type: dict
    size:
      description: Size in bytes; null in check mode for an archive not downloaded yet.
      type: int
    sha256:
      description: SHA-256, as for RV(sha256).
      type: str
    downloaded:
      description: Whether its bytes were downloaded in this run.
      type: bool
    contents:
      description: Secrets and folders counted, when the archive was opened.
      type: dict
      returned: when the archive was opened
newest:
  description: The newest export in storage, downloadable or not, or null.
  returned: always
  type: dict
latest:
  description: The newest export this account may download, or null.
  returned: always
  type: dict
newest_age_hours:
  description: Age in hours of RV(latest), its storage date read as UTC.
  returned: when there is a downloadable export
  type: float
stale:
  description: Whether RV(latest) is older than O(max_age_hours).
  returned: always
  type: bool
exports_total:
  description: Number of exports in storage (within O(configuration_id) when set).
  returned: always
  type: int
msg:
  description: What happened, in one sentence.
  returned: always
  type: str
'''

import grp
import os
import pwd
import stat
import time

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.secretserver.backup.plugins.module_utils import archive as store
from ansible_collections.secretserver.backup.plugins.module_utils.client import (
    SecretServerClient,
    connection_argument_spec,
)
from ansible_collections.secretserver.backup.plugins.module_utils.errors import (
    ArchiveError,
    NotFoundError,
    PermissionDeniedError,
    SecretServerError,
)
from ansible_collections.secretserver.backup.plugins.module_utils.records import (
    latest_downloadable,
)


def argument_spec():
    return connection_argument_spec(
        dest=dict(type='path', required=True),
        export_id=dict(type='int'),
        configuration_id=dict(type='int'),
        select=dict(type='str', choices=['latest', 'all'], default='latest'),
        limit=dict(type='int', default=0),
        force=dict(type='bool', default=False),
        verify=dict(type='bool', default=True),
        export_password=dict(type='str', no_log=True,
                             fallback=(env_fallback, ['TSS_EXPORT_PASSWORD'])),
        reverify=dict(type='bool', default=False),
        max_age_hours=dict(type='float', default=0),
        stale_action=dict(type='str', choices=['fail', 'warn'], default='fail'),
    )


def freshness(latest, max_age_hours, now):
    """(age in hours of the newest downloadable export, whether it is stale)."""
    if latest is None:
        return None, max_age_hours > 0
    age = round((now - latest['storage_timestamp']) / 3600.0, 2)
    return age, max_age_hours > 0 and age > max_age_hours


def stale_message(latest, age, max_age_hours):
    if latest is None:
        return ('the storage list holds no export this account may download, so the tenant\'s '
                'automatic export seems to have stopped (or never ran)')
    return ('the newest downloadable export, %s (id %d, stored %s UTC), is %.1f hours old, '
            'more than max_age_hours %s: the tenant\'s automatic export seems to have stopped'
            % (latest['filename'], latest['id'], latest['storage_date'], age, max_age_hours))


def select_exports(module, records):
    """The records to hold in dest, newest first; warns of those the account cannot download."""
    params = module.params
    if params['export_id'] is not None:
        for record in records:
            if record['id'] == params['export_id']:
                if not record['can_download']:
                    raise PermissionDeniedError(
                        'export %d (%s) is one this account may not download'
                        % (record['id'], record['filename']),
                        hint='Grant the account access to it, or leave export_id unset to '
                             'store the newest export it may download')
                return [record]
        raise NotFoundError('export %d is not in the storage list' % params['export_id'],
                            hint='List the exports with secretserver_export_info; old exports '
                                 'leave storage as the tenant rotates them')
    if params['select'] == 'all':
        window = records[:params['limit']] if params['limit'] > 0 else records
        blocked = [r for r in window if not r['can_download']]
        if blocked:
            module.warn('this account may not download %d export(s) in the window: %s'
                        % (len(blocked), ', '.join('%s (id %d)' % (r['filename'], r['id'])
                                                   for r in blocked)))
        return [r for r in window if r['can_download']]
    latest = latest_downloadable(records)
    if latest is not None and records[0] is not latest:
        module.warn('the newest export, %s (id %d, stored %s), is one this account may not '
                    'download; storing the newest it may download instead'
                    % (records[0]['filename'], records[0]['id'], records[0]['storage_date']))
    if latest is None:
        raise PermissionDeniedError(
            'the storage list holds %d export(s) and none this account may download'
            % len(records) if records else 'the storage list holds no export yet',
            hint='Check that automatic export runs on the tenant and that the account has the '
                 'Download Automatic Export permission')
    return [latest]


class Fetcher:
    """Brings each selected export into dest, one archive at a time."""

    def __init__(self, module, client, owner_ids=(-1, -1)):
        self.module = module
        self.client = client
        self.params = module.params
        self.dest = module.params['dest']
        self.manifest = None
        self.owner_ids = owner_ids

    def listed_sha256(self, name):
        if self.manifest is None:
            self.manifest = store.read_manifest(self.dest) if os.path.isdir(self.dest) else {}
        return self.manifest.get(name)

    def present(self, path):
        """Whether an archive is at path; anything there that is not a plain file is refused."""
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode):
            raise ArchiveError('%s exists and is not a regular file (a link or a directory?); '
                               'nothing was changed' % path,
                               hint='Move it out of the way and run again')
        return True

    def fetch(self, record):
        name = store.archive_name(store.validate_filename(record['filename'], record['id']))
        path = os.path.join(self.dest, name)
        outcome = {'path': path, 'archive_name': name, 'export': record, 'downloaded': False,
                   'changed': False, 'size': None, 'sha256': None}
        damaged = False
        if self.present(path) and not self.params['force']:
            damaged = not self.check_present(path, record, outcome)
            if not damaged:
                return self.keep_present(path, name, outcome)
        outcome['changed'] = True
        if self.module.check_mode:
            outcome['msg'] = 'would download %s' % name
            return outcome
        return self.download(record, name, path, outcome, replace=damaged or self.params['force'])

    def check_present(self, path, record, outcome):
        """True when the archive already there is fine as it is; reads its central directory."""
        if not self.params['verify']:
            return True
        try:
            store.verify_zip(path, record['filename'] + store.XML_SUFFIX)
        except ArchiveError as error:
            self.module.warn('%s is already in dest but is not a readable export archive (%s); '
                             'downloading it again' % (os.path.basename(path), error))
            return False
        if self.params['export_password'] and self.params['reverify']:
            outcome['contents'] = store.prove_archive(
                path, record['filename'] + store.XML_SUFFIX, self.params['export_password'])
        return True

    def keep_present(self, path, name, outcome):
        outcome['size'] = os.path.getsize(path)
        outcome['sha256'] = self.listed_sha256(name)
        outcome['changed'] = self.apply_attributes(path, False)
        outcome['msg'] = '%s is already present' % name
        return outcome

    def download(self, record, name, path, outcome, replace):
        member = record['filename'] + store.XML_SUFFIX
        with store.ArchiveWriter(self.dest, name) as writer:
            fetched = self.client.download(record['id'], writer)
            if self.params['verify']:
                try:
                    writer.verify_zip(member)
                except ArchiveError as error:
                    error.url = error.url or fetched['url']  # which export sent it
                    raise
            if self.params['export_password']:
                outcome['contents'] = store.prove_archive(writer.path, member,
                                                          self.params['export_password'])
            outcome.update(downloaded=True, size=writer.size, sha256=writer.sha256)
            # Owner and group go on while the name is still temporary: a chown this user may
            # not make then fails the run with nothing stored rather than after publishing.
            writer.set_attributes(uid=self.owner_ids[0], gid=self.owner_ids[1])
            placed = writer.commit(replace=replace)
        if not placed:
            outcome.update(changed=False, msg='%s is already present (another run stored it '
                                              'first)' % name)
            return outcome
        self.apply_attributes(path, True)
        outcome['msg'] = 'downloaded %s (%d bytes)' % (name, outcome['size'])
        return outcome

    def apply_attributes(self, path, changed):
        file_args = self.module.load_file_common_arguments(self.params, path=path)
        return self.module.set_fs_attributes_if_different(file_args, changed)


def file_owner_ids(module):
    """(uid, gid) the archives get, -1 where not set; ArchiveError for a wrong owner, group or
    mode."""
    params = module.params
    uid = _account_id(params['owner'], 'owner', 'user', lambda name: pwd.getpwnam(name).pw_uid)
    gid = _account_id(params['group'], 'group', 'group', lambda name: grp.getgrnam(name).gr_gid)
    mode = params['mode']
    if mode is not None and not isinstance(mode, int):
        try:
            int(mode, 8)
        except ValueError:
            try:
                # Only parsed here: a symbolic mode is applied relative to the archive later.
                module._symbolic_mode_to_octal(os.stat(os.sep), mode)
            except ValueError as exc:
                raise ArchiveError('mode %r is neither octal nor symbolic (%s); nothing was '
                                   'downloaded' % (mode, exc),
                                   hint='Quote it in YAML, as "0600" or "u=rw,go="')
    return uid, gid


def _account_id(value, option, what, lookup):
    if value is None or value == '':
        return -1
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return lookup(value)
    except KeyError:
        raise ArchiveError('%s %r is not a %s on this host; nothing was downloaded'
                           % (option, value, what),
                           hint='Check the %s option, or create the %s first' % (option, what))


def run(module):
    params = module.params
    if params['export_password']:
        # Before signing in: without the library the proof would fail only after a whole
        # download, every night (and check mode then predicts that failure).
        store.require_pyzipper()
    # Checked before signing in: a wrong owner, group or mode found only after the archive
    # took its name would fail the run with the archive stored, every night.
    owner_ids = file_owner_ids(module)
    client = SecretServerClient.from_module(module)
    records = client.list_exports(params['configuration_id'])
    latest = latest_downloadable(records)
    age, stale = freshness(latest, params['max_age_hours'], time.time())
    result = dict(changed=False, downloaded=False, archives=[], exports_total=len(records),
                  newest=records[0] if records else None, latest=latest, stale=stale)
    if age is not None:
        result['newest_age_hours'] = age
    if stale:
        message = stale_message(latest, age, params['max_age_hours'])
        if params['stale_action'] == 'fail':
            module.fail_json(msg=message, **result)
        module.warn(message)

    targets = select_exports(module, records)
    if not module.check_mode:
        store.prepare_dest(params['dest'])
        store.cleanup_stale_parts(params['dest'])
    elif not os.path.isdir(params['dest']):
        result['changed'] = True

    fetcher = Fetcher(module, client, owner_ids)
    for record in targets:
        try:
            result['archives'].append(fetcher.fetch(record))
        except SecretServerError as error:
            # Archives stored before the failure stay stored: say which they are.
            result = summarize(module, result)
            result.update(error.to_result())
            # summarize() wrote a msg of its own; the error is what the operator must read.
            result['msg'] = str(error)
            module.fail_json(**result)
    return summarize(module, result)


def summarize(module, result):
    archives = result['archives']
    result['changed'] = result['changed'] or any(a['changed'] for a in archives)
    result['downloaded'] = any(a['downloaded'] for a in archives)
    if archives:
        first = archives[0]
        result.update(dest=first['path'], export=first['export'], size=first['size'],
                      sha256=first['sha256'])
        if 'contents' in first:
            result['contents'] = first['contents']
    added = [a for a in archives if a['changed']]
    if module._diff and added:
        result['diff'] = [{'before_header': a['path'], 'after_header': a['path'],
                           'before': {'path': a['path'], 'state': 'absent'},
                           'after': {'path': a['path'], 'state': 'present'}} for a in added]
    if len(archives) == 1:
        result['msg'] = archives[0]['msg']
    else:
        result['msg'] = ('%d of %d selected archives downloaded, the others already present'
                         % (sum(1 for a in archives if a['downloaded']), len(archives)))
    for entry in archives:
        entry.pop('msg', None)
        entry.pop('changed', None)
    return result


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        add_file_common_args=True,
    )
    if module.params['mode'] is None:
        module.params['mode'] = '0600'
    if module.params['export_id'] is not None and module.params['select'] == 'all':
        module.fail_json(msg='export_id and select=all are mutually exclusive: give one')
    if not os.path.isabs(module.params['dest']):
        module.fail_json(msg='dest must be an absolute path, not %r' % module.params['dest'])

    try:
        result = run(module)
    except SecretServerError as error:
        module.fail_json(msg=str(error), **error.to_result())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
