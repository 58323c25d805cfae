#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: secretserver_export_info
short_description: List the automatic secret exports a Secret Server Cloud tenant keeps in storage
version_added: 1.0.0
description:
  - Reads the storage list of automatic secret exports of a Secret Server Cloud tenant and returns
    every record, newest first.
  - Follows the pages of the storage list to the end (the server caps and defaults the page
    size), asking for large pages so a long list costs few requests.
  - Changes nothing, on the tenant or on the host.
author:
  - secretserver.backup contributors (!UNKNOWN)
options:
  configuration_id:
    description:
      - List only the exports of this automatic export configuration.
    type: int
extends_documentation_fragment:
  - secretserver.backup.connection
attributes:
  check_mode:
    support: full
    description: The module changes nothing, so it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
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
  - module: secretserver.backup.secretserver_export_fetch
notes:
  - Storage dates carry no time zone; the C(storage_timestamp) of each export in the result reads
    them as UTC.
'''

EXAMPLES = r'''
- name: List the exports in storage
  secretserver.backup.secretserver_export_info:
    base_url: https://mytenant.secretservercloud.com
    username: backup-svc
    password: "{{ vault_secretserver_password }}"
  register: storage

- name: Show the newest export the account may download
  ansible.builtin.debug:
    msg: "{{ storage.latest.filename }} stored {{ storage.latest.storage_date }}"
  when: storage.latest is not none

- name: List one export configuration, credentials from TSS_* environment variables
  secretserver.backup.secretserver_export_info:
    base_url: https://mytenant.secretservercloud.com
    configuration_id: 1
'''

RETURN = r'''
exports:
  description: Every export in storage, newest first (by storage date, then by id).
  returned: success
  type: list
  elements: dict
  contains:
    id:
      description: Id of the export, used to download it.
      type: int
      sample: 123
    auto_export_configuration_id:
      description: Id of the automatic export configuration that made it.
      type: int
      sample: 1
    storage_date:
      description: When the export was stored, as the server sent it (no time zone).
      type: str
      sample: "2021-07-01T07:00:02.27"
    storage_timestamp:
      description: O(ignore:storage_date) as seconds since the epoch, read as UTC.
      type: float
      sample: 1625122802.27
    filename:
      description: Base name of the archive and of the XML file inside it, as the server sent it.
      type: str
      sample: secret-server-export-20210701070002
    archive_name:
      description: The file name the archive is stored under, O(ignore:filename) plus C(.zip).
      type: str
      sample: secret-server-export-20210701070002.zip
    can_download:
      description: Whether this account may download the export.
      type: bool
      sample: true
latest:
  description: The newest export the account may download, or null when there is none.
  returned: success
  type: dict
  sample:
    id: 123
    auto_export_configuration_id: 1
    storage_date: "2021-07-01T07:00:02.27"
    storage_timestamp: 1625122802.27
    filename: secret-server-export-20210701070002
    archive_name: secret-server-export-20210701070002.zip
    can_download: true
newest:
  description: The newest export, whether the account may download it or not, or null.
  returned: success
  type: dict
total:
  description: Number of exports in storage.
  returned: success
  type: int
  sample: 7
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.secretserver.backup.plugins.module_utils.client import (
    SecretServerClient,
    connection_argument_spec,
)
from ansible_collections.secretserver.backup.plugins.module_utils.errors import SecretServerError
from ansible_collections.secretserver.backup.plugins.module_utils.records import (
    latest_downloadable,
)


def main():
    module = AnsibleModule(
        argument_spec=connection_argument_spec(configuration_id=dict(type='int')),
        supports_check_mode=True,
    )

    try:
        client = SecretServerClient.from_module(module)
        exports = client.list_exports(module.params['configuration_id'])
    except SecretServerError as error:
        module.fail_json(msg=str(error), **error.to_result())

    module.exit_json(
        changed=False,
        exports=exports,
        latest=latest_downloadable(exports),
        newest=exports[0] if exports else None,
        total=len(exports),
    )


if __name__ == '__main__':
    main()
