#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: secretserver_archive_verify
short_description: Prove that stored export archives open with the export password
version_added: 1.0.0
description:
  - The restore drill for archives stored by M(secretserver.backup.secretserver_export_fetch).
    It opens each export archive in a directory with the Export Password, checks the AES password
    verifier and authentication code of its XML, decrypts, inflates and parses the XML as a
    stream, and counts its secrets and folders.
  - Nothing decrypted is ever written to disk or kept in memory beyond one read at a time.
  - Fails, naming each archive that does not open and why (wrong password, or damaged), after
    trying them all.
author:
  - secretserver.backup contributors (!UNKNOWN)
options:
  path:
    description:
      - Absolute path of the directory holding the archives.
    type: path
    required: true
  export_password:
    description:
      - The Export Password of the automatic export configuration.
      - If not set, the value of the E(TSS_EXPORT_PASSWORD) environment variable is used.
    type: str
    required: true
  names:
    description:
      - Archive names to prove. By default every export archive in O(path).
    type: list
    elements: str
attributes:
  check_mode:
    support: full
    description: Reads only, so it runs the same in check mode.
  diff_mode:
    support: none
    description: Reads only, so there is nothing to show.
  platform:
    platforms: posix
    support: full
    description: Runs on any POSIX host with Python 3.8 or newer and pyzipper.
  action_group:
    support: none
    membership: []
    description: Not in C(group/secretserver.backup.secretserver) of C(module_defaults); it takes
      no connection options.
requirements:
  - pyzipper (on the host holding the archives)
seealso:
  - module: secretserver.backup.secretserver_export_fetch
'''

EXAMPLES = r'''
- name: Prove every kept archive opens
  secretserver.backup.secretserver_archive_verify:
    path: /var/backups/secretserver
    export_password: "{{ vault_export_password }}"
  register: drill
'''

RETURN = r'''
archives:
  description: One entry per archive, newest first.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Archive file name.
      type: str
    result:
      description: V(ok), or V(failed).
      type: str
    secrets:
      description: Secrets counted in the export XML.
      type: int
    folders:
      description: Folders counted in the export XML.
      type: int
    msg:
      description: Why the archive did not open.
      type: str
proven:
  description: Number of archives that opened.
  returned: always
  type: int
unopened:
  description: Number of archives that did not open. (Not C(failed), which Ansible reserves for
    the task's own verdict.)
  returned: always
  type: int
'''

import os

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.secretserver.backup.plugins.module_utils import archive as store
from ansible_collections.secretserver.backup.plugins.module_utils.errors import SecretServerError


def prove(path, name, password):
    entry = {'name': name, 'result': 'ok', 'secrets': None, 'folders': None}
    member = name[:-len(store.ARCHIVE_SUFFIX)] + store.XML_SUFFIX
    try:
        entry.update(store.prove_archive(os.path.join(path, name), member, password))
    except SecretServerError as error:
        entry.update(result='failed', msg=str(error))
    return entry


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', required=True),
            export_password=dict(type='str', no_log=True, required=True,
                                 fallback=(env_fallback, ['TSS_EXPORT_PASSWORD'])),
            names=dict(type='list', elements='str'),
        ),
        supports_check_mode=True,
    )
    path = module.params['path']
    if not os.path.isdir(path):
        module.fail_json(msg='%s is not a directory: give the directory the archives are in'
                             % path)
    # Said once, up front: otherwise each archive would fail with the same reason.
    if not module.params['export_password']:
        module.fail_json(msg='no export password was given, so no archive can be opened',
                         hint='Set export_password (backup_exports_export_password for the '
                              'verify playbook, or the TSS_EXPORT_PASSWORD environment variable)')
    try:
        store.require_pyzipper()
    except SecretServerError:
        module.fail_json(msg='opening export archives needs the Python package pyzipper, which '
                             'is not installed on this host: pip install pyzipper')

    try:
        names = store.list_archives(path)
        wanted = module.params['names']
        if wanted is not None:
            missing = sorted(set(wanted) - set(names))
            if missing:
                module.fail_json(msg='no such archive in %s: %s' % (path, ', '.join(missing)))
            names = [n for n in names if n in wanted]
        archives = [prove(path, name, module.params['export_password']) for name in names]
    except SecretServerError as error:
        module.fail_json(msg=str(error), **error.to_result())

    failed = [a for a in archives if a['result'] != 'ok']
    result = dict(changed=False, archives=archives, proven=len(archives) - len(failed),
                  unopened=len(failed))
    if failed:
        module.fail_json(msg='%d of %d archives did not open: %s' % (
            len(failed), len(archives), '; '.join('%s: %s' % (a['name'], a['msg'])
                                                  for a in failed)), **result)
    result['msg'] = '%d archive(s) open with the export password' % len(archives)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
