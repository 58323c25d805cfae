# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r'''
options:
  base_url:
    description:
      - URL of the Secret Server Cloud tenant, for example C(https://mytenant.secretservercloud.com),
        or of a Delinea Platform tenant (C(https://mytenant.delinea.app)).
      - A sub-path (C(https://host/SecretServer)) is kept. A trailing slash or an C(/api/v1) suffix
        is removed, so pasting the API URL works too.
      - If not set, the value of the E(TSS_BASE_URL) environment variable is used.
    type: str
    required: true
  username:
    description:
      - Account that signs in with the OAuth2 password grant. It needs the View Automatic Export
        permission to list and the Download Automatic Export permission to download.
      - In Platform mode (see O(platform)), the client ID of the Platform service user.
      - If not set, the value of the E(TSS_USERNAME) environment variable is used.
      - Give O(username) and O(password), or O(token).
    type: str
  password:
    description:
      - Password of O(username); in Platform mode the client secret of the service user.
      - If not set, the value of the E(TSS_PASSWORD) environment variable is used.
    type: str
  domain:
    description:
      - Directory domain of O(username), for a directory account. Not used in Platform mode.
      - If not set, the value of the E(TSS_DOMAIN) environment variable is used.
    type: str
  token:
    description:
      - A ready access token, used as is instead of signing in. It cannot be renewed, so when it
        expires the module fails and says so.
      - Mutually exclusive with O(username) and O(password).
      - If not set, the value of the E(TSS_TOKEN) environment variable is used.
    type: str
  api_path_uri:
    description:
      - Path of the REST API below O(base_url).
      - If not set, the value of the E(TSS_API_PATH_URI) environment variable is used.
    type: str
    default: /api/v1
  token_path_uri:
    description:
      - Path of the OAuth2 token endpoint below O(base_url). Not used in Platform mode.
      - If not set, the value of the E(TSS_TOKEN_PATH_URI) environment variable is used.
    type: str
    default: /oauth2/token
  validate_certs:
    description:
      - Whether to verify the TLS certificate of the tenant. Turning it off lets anyone on the
        network path read the access token and the archives; the module warns when it is off.
    type: bool
    default: true
  ca_path:
    description:
      - A PEM file of CA certificates to verify the tenant with, instead of the system store.
    type: path
  timeout:
    description:
      - Seconds to wait for a connection, and for each read of an answer. A download that stalls
        longer than this fails (and is retried) instead of hanging the play.
    type: float
    default: 30
  retries:
    description:
      - How many times a request is repeated after a connection failure, a broken download or an
        answer of HTTP 429, 502, 503 or 504. Waits double from half a second, with jitter; a
        C(Retry-After) header is honoured up to 60 seconds per wait.
      - Other errors (bad credentials, missing permission, not found) are not retried.
    type: int
    default: 3
  platform:
    description:
      - Sign in through the Delinea Platform with client credentials and find the Secret Server
        vault through the Platform vault broker.
      - Defaults to true when the host of O(base_url) ends in C(.delinea.app), else false.
    type: bool
  vault_url:
    description:
      - In Platform mode, the Secret Server URL to use instead of asking the vault broker.
        Used as given.
    type: str
  allowed_vault_hosts:
    description:
      - In Platform mode, hosts (C(host) or C(host:port)) besides the Delinea cloud domains and
        the host of O(base_url) that a discovered vault URL may point at. The access token is
        never sent to any other host.
    type: list
    elements: str
    default: []
notes:
  - The access tokens obtained during the run are masked in every output, as are O(password)
    and O(token).
  - An HTTP 401 on an API call renews the access token once (refresh grant, else a new sign-in)
    and repeats the call.
requirements:
  - requests (on the host that runs the module)
'''
