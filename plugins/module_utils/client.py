# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one HTTP client of the collection: session, sign-in, paging, errors, retries, streaming.

Modules build it with SecretServerClient.from_module(module) and only call list_exports()
and download(). Everything that talks to the tenant lives here, so retries, token renewal and
error messages behave the same in every module.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import queue
import random
import re
import threading
import time
from email.utils import parsedate_to_datetime

try:
    import requests
    HAS_REQUESTS = True
    REQUESTS_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised by the import sanity test
    HAS_REQUESTS = False
    REQUESTS_IMPORT_ERROR = exc

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.six.moves.urllib.parse import urlsplit, urlunsplit

from ansible_collections.secretserver.backup.plugins.module_utils.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    SecretServerError,
    TLSError,
    TransportError,
)
from ansible_collections.secretserver.backup.plugins.module_utils.records import (
    normalize_records,
)


USER_AGENT = 'secretserver.backup-ansible-collection/1.0'
LIST_PATH = '/configuration/auto-export-storage'
ITEM_PATH = '/configuration/auto-export-storage/item/%d'
PLATFORM_TOKEN_PATH = '/identity/api/oauth2/token/xpmplatform'
PLATFORM_VAULTS_PATH = '/vaultbroker/api/vaults'

# Ask for large pages: the server caps take on its side, and fewer pages means fewer
# requests against a rate-limited API. hasNext decides when to stop, never this number.
PAGE_SIZE = 1000
MAX_PAGES = 10000

# Large reads keep the per-chunk Python work negligible next to the bytes moved.
CHUNK_SIZE = 1024 * 1024
PIPE_DEPTH = 8

# A Retry-After longer than this is not honoured as is: a nightly job should fail and say so
# rather than sleep for an hour. Backoff without Retry-After doubles from BACKOFF_BASE.
MAX_RETRY_WAIT = 60.0
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
RETRY_STATUSES = (429, 502, 503, 504)

CLOUD_VAULT_HOST = re.compile(
    r'(^|\.)(secretservercloud\.(com|eu|com\.au|ca|com\.sg|co\.uk)|delinea\.app)$')

CONNECTION_ARGSPEC = dict(
    base_url=dict(type='str', required=True, fallback=(env_fallback, ['TSS_BASE_URL'])),
    username=dict(type='str', fallback=(env_fallback, ['TSS_USERNAME'])),
    password=dict(type='str', no_log=True, fallback=(env_fallback, ['TSS_PASSWORD'])),
    domain=dict(type='str', fallback=(env_fallback, ['TSS_DOMAIN'])),
    token=dict(type='str', no_log=True, fallback=(env_fallback, ['TSS_TOKEN'])),
    api_path_uri=dict(type='str', default='/api/v1', fallback=(env_fallback, ['TSS_API_PATH_URI'])),
    token_path_uri=dict(type='str', default='/oauth2/token', no_log=False,
                        fallback=(env_fallback, ['TSS_TOKEN_PATH_URI'])),
    validate_certs=dict(type='bool', default=True),
    ca_path=dict(type='path'),
    timeout=dict(type='float', default=30),
    retries=dict(type='int', default=3),
    platform=dict(type='bool'),
    vault_url=dict(type='str'),
    allowed_vault_hosts=dict(type='list', elements='str', default=[]),
)


def connection_argument_spec(**extra):
    """The argspec every module starts from, plus its own options."""
    spec = dict((name, dict(value)) for name, value in CONNECTION_ARGSPEC.items())
    spec.update(extra)
    return spec


def join_url(base, *paths):
    """Append paths to a URL that may carry a sub-path of its own, without doubling slashes."""
    url = base.rstrip('/')
    for path in paths:
        if path:
            url += '/' + path.strip('/')
    return url


def normalize_base_url(base_url, api_path_uri='/api/v1'):
    """The tenant URL with no trailing slash and no accidental API suffix; keeps a sub-path."""
    parts = urlsplit((base_url or '').strip())
    if parts.scheme not in ('http', 'https') or not parts.netloc:
        raise SecretServerError(
            'base_url %r is not an http(s) URL' % base_url,
            hint='Give the tenant URL with its scheme, for example '
                 'https://mytenant.secretservercloud.com')
    if parts.query or parts.fragment:
        raise SecretServerError('base_url %r must not carry a query or a fragment' % base_url)
    path = parts.path.rstrip('/')
    api_suffix = '/' + (api_path_uri or '').strip('/')
    if api_suffix != '/' and path.lower().endswith(api_suffix.lower()):
        path = path[:-len(api_suffix)]
    return urlunsplit((parts.scheme, parts.netloc, path, '', ''))


def retry_after_seconds(value, now=None):
    """Seconds asked for by a Retry-After header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(attempt, retry_after=None):
    """How long to wait before attempt number attempt + 1 (attempt counts from 0)."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_WAIT)
    delay = min(BACKOFF_BASE * (2 ** attempt), BACKOFF_MAX)
    return delay + random.uniform(0, delay / 2)


def _json_error_text(response):
    """The message the service put in an error answer, without anything else of the body."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    for key in ('message', 'error_description', 'error', 'errorCode'):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:200]
    return None


def _looks_like_html(response):
    content_type = response.headers.get('Content-Type', '').lower()
    return 'html' in content_type


class _Grant:
    """How the client gets an access token; one small subclass per way of signing in."""

    can_renew = False

    def __init__(self, client):
        self.client = client

    def obtain(self):
        raise NotImplementedError

    def renew(self):
        return self.obtain()


class _StaticToken(_Grant):
    """A ready access token from the operator: nothing to renew when it expires."""

    def __init__(self, client, token):
        super(_StaticToken, self).__init__(client)
        self.token = token

    def obtain(self):
        return self.token


class _PasswordGrant(_Grant):
    """OAuth2 password grant, renewed with the refresh token when the service gave one."""

    can_renew = True

    def __init__(self, client, username, password, domain):
        super(_PasswordGrant, self).__init__(client)
        self.form = {'grant_type': 'password', 'username': username, 'password': password}
        if domain:
            self.form['domain'] = domain
        self.refresh_token = None

    def obtain(self):
        answer = self.client.request_token(self.client.token_url, self.form, 'the password grant')
        self.refresh_token = answer.get('refresh_token')
        self.client.register_secret(self.refresh_token)
        return answer['access_token']

    def renew(self):
        if self.refresh_token:
            form = {'grant_type': 'refresh_token', 'refresh_token': self.refresh_token}
            try:
                answer = self.client.request_token(self.client.token_url, form,
                                                   'the refresh grant')
            except AuthenticationError:
                return self.obtain()
            self.refresh_token = answer.get('refresh_token') or self.refresh_token
            self.client.register_secret(self.refresh_token)
            return answer['access_token']
        return self.obtain()


class _PlatformGrant(_Grant):
    """Delinea Platform client credentials: no refresh grant, so renewing signs in again."""

    can_renew = True

    def __init__(self, client, client_id, client_secret):
        super(_PlatformGrant, self).__init__(client)
        self.form = {'grant_type': 'client_credentials', 'client_id': client_id,
                     'client_secret': client_secret, 'scope': 'xpmheadless'}

    def obtain(self):
        url = join_url(self.client.base_url, PLATFORM_TOKEN_PATH)
        return self.client.request_token(url, self.form, 'the Platform client-credentials grant')['access_token']


class SecretServerClient:
    """A signed-in conversation with one tenant.

    register_secret is called with every token obtained, so a module can add it to its
    no_log values before anything could print it; warn receives operator-facing warnings.
    """

    def __init__(self, base_url, username=None, password=None, domain=None, token=None,
                 api_path_uri='/api/v1', token_path_uri='/oauth2/token', validate_certs=True,
                 ca_path=None, timeout=30, retries=3, platform=None, vault_url=None,
                 allowed_vault_hosts=(), register_secret=None, warn=None):
        if not HAS_REQUESTS:
            raise SecretServerError(
                'the Python library requests is not installed on the host running the module',
                hint='Install it there (pip install requests), or let the controller download '
                     '(backup_exports_download_on: controller in the backup_exports role)')
        self.base_url = normalize_base_url(base_url, api_path_uri)
        self.api_path_uri = api_path_uri
        self.token_url = join_url(self.base_url, token_path_uri)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.allowed_vault_hosts = [h.lower() for h in allowed_vault_hosts or ()]
        self._register = register_secret or (lambda value: None)
        self._warn = warn or (lambda msg: None)
        self._sleep = time.sleep
        self.session = self._new_session(validate_certs, ca_path)
        self.platform = _is_platform(self.base_url) if platform is None else platform
        self.api_base = join_url(vault_url or self.base_url, api_path_uri)
        self._vault_given = bool(vault_url)
        self._token = None
        self.grant = self._choose_grant(username, password, domain, token)

    @classmethod
    def from_module(cls, module):
        """Build the client from the connection options of an AnsibleModule."""
        params = module.params
        if not params['validate_certs']:
            module.warn('validate_certs is false: the tenant certificate is not checked, so '
                        'anyone on the network path could read the access token and archives.')
        return cls(
            params['base_url'], username=params['username'], password=params['password'],
            domain=params['domain'], token=params['token'],
            api_path_uri=params['api_path_uri'], token_path_uri=params['token_path_uri'],
            validate_certs=params['validate_certs'], ca_path=params['ca_path'],
            timeout=params['timeout'], retries=params['retries'], platform=params['platform'],
            vault_url=params['vault_url'], allowed_vault_hosts=params['allowed_vault_hosts'],
            register_secret=lambda value: value and module.no_log_values.add(value),
            warn=module.warn)

    def _new_session(self, validate_certs, ca_path):
        session = requests.Session()
        session.headers['User-Agent'] = USER_AGENT
        # Passed with every request too: requests lets REQUESTS_CA_BUNDLE override a
        # session-level setting, which would silently ignore ca_path.
        self.verify = (ca_path or True) if validate_certs else False
        session.verify = self.verify
        if not validate_certs:
            _silence_insecure_warning()
        return session

    def _choose_grant(self, username, password, domain, token):
        # Checked here rather than by AnsibleModule so that an empty value counts as unset:
        # AWX renders credential fields the operator left blank as empty variables.
        if token and (username or password):
            raise SecretServerError('token is mutually exclusive with username and password',
                                    hint='Give one of them (check the TSS_TOKEN, TSS_USERNAME '
                                         'and TSS_PASSWORD environment variables too)')
        if token:
            self.register_secret(token)
            return _StaticToken(self, token)
        if not (username and password):
            raise SecretServerError('no credentials were given',
                                    hint='Set username and password (or the TSS_USERNAME and '
                                         'TSS_PASSWORD environment variables), or token')
        self.register_secret(password)
        if self.platform:
            return _PlatformGrant(self, username, password)
        return _PasswordGrant(self, username, password, domain)

    def register_secret(self, value):
        if value:
            self._register(value)

    # ---- requests with retries -------------------------------------------------------

    def _send(self, method, url, bearer=None, budget=None, **kwargs):
        """One request, retried on transport failures and on 429/502/503/504.

        budget: the _RetryBudget of the operation this request belongs to, when the caller
        repeats requests of its own (a download retried from the start).
        """
        headers = kwargs.pop('headers', {})
        if bearer:
            headers['Authorization'] = 'Bearer ' + bearer
        budget = budget or _RetryBudget(self.retries)
        while True:
            retry_after = None
            try:
                response = self.session.request(method, url, headers=headers, verify=self.verify,
                                                timeout=(self.timeout, self.timeout), **kwargs)
            except requests.exceptions.SSLError as exc:
                raise TLSError(
                    'the TLS certificate of the server could not be verified', url=url,
                    hint='Set ca_path to the CA bundle that signed it (validate_certs: false '
                         'skips the check, not recommended). Cause: %s' % _short(exc))
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                error = TransportError('could not reach the server: %s' % _short(exc), url=url,
                                       hint='Check base_url, the network path and timeout')
            except requests.exceptions.ChunkedEncodingError as exc:
                # requests reads a whole JSON answer inside request(): a reset or a short body
                # there is as transient as a failed connection.
                error = TransportError('the answer broke off: %s' % _short(exc), url=url,
                                       hint='Check the network path to the tenant and timeout')
            except requests.exceptions.RequestException as exc:
                raise SecretServerError('the request could not be made: %s' % _short(exc),
                                        url=url, hint='Check base_url and api_path_uri')
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                retry_after = retry_after_seconds(response.headers.get('Retry-After'))
                error = TransportError('the server is busy or unavailable', url=url,
                                       status=response.status_code,
                                       hint='It kept answering so after %d retries; try later'
                                            % self.retries)
                response.close()
            attempt = budget.spend()
            if attempt is None:
                raise error
            self._sleep(backoff_delay(attempt, retry_after))

    def request_token(self, url, form, what):
        """POST a form-encoded grant and return the parsed answer with its access token."""
        response = self._send('POST', url, data=form, headers={'Accept': 'application/json'})
        if response.status_code in (400, 401):
            reason = _json_error_text(response) or 'rejected'
            raise AuthenticationError(
                'the tenant refused %s (%s)' % (what, reason), url=url,
                status=response.status_code, hint=self._credential_hint())
        answer = self._json(response, url)
        token = answer.get('access_token') if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError('the token answer holds no access_token', url=url,
                                hint='Check token_path_uri and that base_url is the tenant')
        self.register_secret(token)
        return answer

    def _credential_hint(self):
        if self.platform:
            return ('Check username and password: in Platform mode they are the client ID and '
                    'secret of the Platform service user')
        return 'Check username, password and domain (domain only for directory accounts)'

    def _access_token(self):
        if self._token is None:
            self._token = self.grant.obtain()
            if self.platform and not self._vault_given:
                self.api_base = join_url(self.discover_vault(), self.api_path_uri)
        return self._token

    def _api_url(self, path):
        # Signing in first: in Platform mode that is what finds the vault the API lives on,
        # so a URL built before it would point at the Platform host instead.
        self._access_token()
        return join_url(self.api_base, path)

    def api_get(self, url, **kwargs):
        """GET with the access token; a 401 renews the token once and repeats the call."""
        response = self._send('GET', url, bearer=self._access_token(), **kwargs)
        if response.status_code == 401 and self.grant.can_renew:
            response.close()
            self._token = self.grant.renew()
            response = self._send('GET', url, bearer=self._token, **kwargs)
        if response.status_code >= 400:
            self._raise_for_status(response, url)
        return response

    def _raise_for_status(self, response, url):
        status = response.status_code
        reason = _json_error_text(response)
        response.close()
        if status == 401:
            raise AuthenticationError(
                'the tenant refused the access token (%s)' % (reason or 'unauthorized'),
                url=url, status=status,
                hint='The token expired or was revoked; renewing it did not help. Check the '
                     'credentials' if self.grant.can_renew else
                     'A given token cannot be renewed: supply a fresh one, or username and password')
        if status == 403:
            raise PermissionDeniedError(
                'the account lacks a permission (%s)' % (reason or 'forbidden'), url=url,
                status=status, hint=_permission_hint(url))
        if status == 404:
            raise NotFoundError('not found (%s)' % (reason or 'no such resource'), url=url,
                                status=status,
                                hint='Check base_url, api_path_uri and the export id')
        raise SecretServerError('the server answered with an error (%s)' % (reason or status),
                                url=url, status=status)

    def _json(self, response, url):
        if _looks_like_html(response):
            response.close()
            raise ProtocolError(
                'the server sent an HTML page instead of JSON', url=url,
                status=response.status_code,
                hint='base_url probably points at a sign-in page or another site, not the '
                     'Secret Server tenant')
        try:
            return response.json()
        except ValueError:
            raise ProtocolError('the server answer is not valid JSON', url=url,
                                status=response.status_code,
                                hint='Check that base_url and api_path_uri point at the API')

    # ---- Delinea Platform -------------------------------------------------------------

    def discover_vault(self):
        """The Secret Server URL of the default active vault the Platform broker knows."""
        url = join_url(self.base_url, PLATFORM_VAULTS_PATH)
        response = self._send('GET', url, bearer=self._token)
        if response.status_code == 401:
            response.close()
            self._token = self.grant.renew()
            response = self._send('GET', url, bearer=self._token)
        if response.status_code >= 400:
            self._raise_for_status(response, url)
        try:
            answer = self._json(response, url)
        except ProtocolError as error:
            raise ProtocolError(
                'the Platform vault broker did not answer with JSON (%s)' % error.msg, url=url,
                status=error.status,
                hint='Check that base_url is the Platform tenant (https://<tenant>.delinea.app) '
                     'and platform is meant to be on, or set vault_url to skip the broker')
        vault_url = _default_vault_url(answer, url)
        self._check_vault_host(vault_url)
        return vault_url

    def _check_vault_host(self, vault_url):
        vault, base = _host_and_port(vault_url), _host_and_port(self.base_url)
        if vault is None:
            raise ProtocolError('the Platform broker gives the default vault the URL %r, which '
                                'is not an absolute http(s) URL; no token was sent there'
                                % vault_url[:200],
                                hint='Check the vault connection in the Platform, or set '
                                     'vault_url')
        scheme, host, port = vault
        if scheme == 'https' and CLOUD_VAULT_HOST.search(host):
            return
        # Same origin as base_url: the token already goes there.
        if vault == base:
            return
        where = ('[%s]:%d' if ':' in host else '%s:%d') % (host, port)
        if host in self.allowed_vault_hosts or where in self.allowed_vault_hosts:
            return
        raise SecretServerError(
            'the Platform broker names a vault at %s, which is not a Delinea cloud host over '
            'https nor the host of base_url; no token was sent there' % where,
            hint='If that host is yours, add "%s" (or "%s") to allowed_vault_hosts, or set '
                 'vault_url' % (host, where))

    # ---- the storage list and downloads ----------------------------------------------

    def list_exports(self, configuration_id=None):
        """Every export record in storage, newest first, following the pages to the end."""
        path = LIST_PATH if configuration_id is None else '%s/%d' % (LIST_PATH, configuration_id)
        url = self._api_url(path)
        raw, skip, seen_skips = [], 0, set()
        for dummy in range(MAX_PAGES):
            page = self._json(self.api_get(url, params={'skip': skip, 'take': PAGE_SIZE}), url)
            records = page.get('records') if isinstance(page, dict) else None
            if not isinstance(records, list):
                raise ProtocolError('the storage list answer has no records list', url=url,
                                    hint='Check that base_url points at a Secret Server Cloud '
                                         'tenant with automatic export')
            raw.extend(records)
            seen_skips.add(skip)
            skip = _next_skip(page, skip, len(records))
            if skip is None:
                return normalize_records(raw, url)
            if skip in seen_skips:
                raise ProtocolError('the storage list pages do not advance (nextSkip %r)' % skip,
                                    url=url)
        raise ProtocolError('the storage list has more than %d pages' % MAX_PAGES, url=url)

    def download(self, export_id, writer):
        """Stream one archive into writer (write/reset/size); retried from the start on failure."""
        url = self._api_url(ITEM_PATH % export_id)
        # One budget for the whole download: the requests _send repeats on a 503 and the
        # restarts after a broken stream both spend it, so retries bounds the requests.
        budget = _RetryBudget(self.retries)
        while True:
            try:
                return self._download_once(url, writer, budget)
            except TransportError as error:
                attempt = None if isinstance(error, TLSError) else budget.spend()
                if attempt is None:
                    raise
                writer.reset()
                self._sleep(backoff_delay(attempt))

    def _download_once(self, url, writer, budget=None):
        # The archive is compressed already; identity keeps a proxy from re-encoding it.
        response = self.api_get(url, budget=budget, stream=True,
                                headers={'Accept-Encoding': 'identity'})
        try:
            if _looks_like_html(response):
                raise ProtocolError(
                    'the server sent an HTML page instead of the archive', url=url,
                    status=response.status_code,
                    hint='base_url probably points at a sign-in page, not the tenant')
            expected = _content_length(response)
            _copy_body(response, writer, url)
        finally:
            response.close()
        if expected is not None and writer.size != expected:
            raise TransportError('the download ended after %d of %d bytes'
                                 % (writer.size, expected), url=url, hint=_BROKEN_HINT)
        return {'url': url, 'content_length': expected}


_BROKEN_HINT = ('A broken download is retried from the start up to retries times; check the '
                'network path to the tenant, and timeout if the server is slow')


class _RetryBudget:
    """The retries one operation may still spend, shared by every request it repeats."""

    def __init__(self, retries):
        self.retries = retries
        self.spent = 0

    def spend(self):
        """Take one retry and return its number (from 0), or None when none is left."""
        if self.spent >= self.retries:
            return None
        self.spent += 1
        return self.spent - 1


def _copy_body(response, writer, url):
    """Move the body into writer; a broken stream is a transport error.

    Reading the socket and hashing plus writing the file each release the GIL, so a thread
    that writes while this one reads lets the two overlap: the download costs about the
    slower of the two instead of their sum, with at most PIPE_DEPTH chunks in memory.
    """
    read = response.raw.read
    pipe = _WritePipe(writer)
    try:
        while True:
            try:
                chunk = read(CHUNK_SIZE, decode_content=True)
            except Exception as exc:  # requests, urllib3 and socket errors all end up here
                if _is_broken_stream(exc):
                    raise TransportError('the download broke off: %s' % _short(exc), url=url,
                                         hint=_BROKEN_HINT)
                raise
            if not chunk:
                break
            pipe.put(chunk)
    finally:
        pipe.close()


class _WritePipe:
    """A bounded queue of chunks and the thread that hands them to writer.write in order."""

    def __init__(self, writer):
        self.writer = writer
        self.queue = queue.Queue(PIPE_DEPTH)
        self.error = None
        self.thread = threading.Thread(target=self._drain, name='archive-writer')
        self.thread.daemon = True
        self.thread.start()

    def _drain(self):
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            if self.error is None:
                try:
                    self.writer.write(chunk)
                except BaseException as exc:  # handed to the reading thread by close/put
                    self.error = exc

    def put(self, chunk):
        if self.error is not None:
            raise self.error
        self.queue.put(chunk)

    def close(self):
        """Wait for every queued chunk to be written; raise what the writer raised."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _is_broken_stream(exc):
    if isinstance(exc, requests.exceptions.RequestException):
        return True
    if type(exc).__module__.startswith('urllib3'):
        return True
    return isinstance(exc, (IOError, OSError)) and (
        not getattr(exc, 'errno', None) or _is_network_error(exc))


def _is_network_error(exc):
    return exc.errno in (errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT)


def _content_length(response):
    value = response.headers.get('Content-Length')
    if value is None or 'chunked' in response.headers.get('Transfer-Encoding', '').lower():
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _next_skip(page, skip, count):
    """Where the next page starts, or None at the end; trusts hasNext, not the page size."""
    if not page.get('hasNext'):
        return None
    next_skip = page.get('nextSkip')
    if isinstance(next_skip, int) and not isinstance(next_skip, bool) and next_skip > skip:
        return next_skip
    return skip + count if count else skip


def _default_vault_url(answer, url):
    vaults = answer.get('vaults') if isinstance(answer, dict) else None
    if not isinstance(vaults, list):
        raise ProtocolError('the Platform vault broker answer has no vaults list', url=url,
                            hint='Check that base_url is the Platform tenant, or set vault_url')
    names = []
    for vault in vaults:
        if not isinstance(vault, dict):
            continue
        names.append(str(vault.get('name')))
        connection = vault.get('connection') or {}
        if vault.get('isDefault') is True and vault.get('isActive') is True \
                and isinstance(connection, dict) and isinstance(connection.get('url'), str):
            return connection['url']
    raise ProtocolError('the Platform broker lists no vault that is both default and active '
                        '(vaults: %s)' % (', '.join(names) or 'none'), url=url,
                        hint='Mark a Secret Server vault default in the Platform, or set '
                             'vault_url')


def _host_and_port(url):
    """(scheme, lower-case host, port with the scheme's default filled in), or None."""
    parts = urlsplit(url if isinstance(url, str) else '')
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ('http', 'https') or not parts.hostname:
        return None
    return (parts.scheme, parts.hostname.lower().rstrip('.'),
            port or (443 if parts.scheme == 'https' else 80))


def _is_platform(base_url):
    host = (urlsplit(base_url).hostname or '').lower()
    return host == 'delinea.app' or host.endswith('.delinea.app')


def _permission_hint(url):
    if '/item/' in url:
        return ('The account needs the "Download Automatic Export" permission '
                '(and the export must be one it may download)')
    return 'The account needs the "View Automatic Export" permission'


def _short(exc):
    """An exception's text, short, one line: library errors can run to several lines."""
    text = ' '.join(str(exc).split())
    return text[:300]


def _silence_insecure_warning():
    try:
        import urllib3
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    except (ImportError, AttributeError):
        pass
