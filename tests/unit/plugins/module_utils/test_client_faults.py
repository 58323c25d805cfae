"""The shared client under injected faults: retries, waits, renewals, timeouts, broken answers.

Waits are recorded instead of slept (client._sleep), so these tests assert what the client
asked to wait for, and the emulator's request counts prove how often it asked the server.
The module-level behaviour (files in dest, messages) is in tests/integration/test_faults.py.
"""

import email.utils
import socket
import time

import pytest

from ansible_collections.secretserver.backup.plugins.module_utils import client as client_mod
from ansible_collections.secretserver.backup.plugins.module_utils.client import SecretServerClient
from ansible_collections.secretserver.backup.plugins.module_utils.errors import (
    ArchiveError,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    SecretServerError,
    TransportError,
)


class Sink:
    """A writer that keeps the bytes in memory and counts its resets."""

    def __init__(self, fail_after=None):
        self.data = bytearray()
        self.resets = 0
        self.fail_after = fail_after

    @property
    def size(self):
        return len(self.data)

    def write(self, chunk):
        if self.fail_after is not None and len(self.data) + len(chunk) > self.fail_after:
            raise ArchiveError('Writing failed: No space left on device')
        self.data += chunk

    def reset(self):
        self.data = bytearray()
        self.resets += 1


def make_client(emulator, retries=2, timeout=10, **kwargs):
    args = dict(username='backup', password='backup-password')
    args.update(kwargs)
    client = SecretServerClient(args.pop('base_url', emulator.url), retries=retries,
                                timeout=timeout, **args)
    client.waits = []
    client._sleep = client.waits.append
    return client


def newest(emulator):
    return next(r for r in emulator.records() if r['canDownload'])


def counts(emulator):
    return emulator.state()['counts']


def signed_in(emulator, **kwargs):
    """A client that has listed once, with the emulator's counts and faults cleared after."""
    client = make_client(emulator, **kwargs)
    client.list_exports()
    client.waits.clear()
    emulator.reset()
    return client


# --- broken downloads -------------------------------------------------------------------------

@pytest.mark.parametrize('cut', ['zero', 'one', 'half', 'last'])
@pytest.mark.parametrize('kind', ['drop_after', 'truncate'])
def test_download_broken_once_is_retried_from_the_start_and_ends_byte_identical(
        emulator, kind, cut):
    record = newest(emulator)
    served = emulator.archive_bytes(record['id'])
    client = signed_in(emulator, retries=1)
    at = {'zero': 0, 'one': 1, 'half': len(served) // 2, 'last': len(served) - 1}[cut]
    emulator.add_fault('download', kind, bytes=at)
    sink = Sink()

    client.download(record['id'], sink)

    assert bytes(sink.data) == served
    assert sink.resets == 1
    assert counts(emulator)['download'] == 2
    assert len(client.waits) == 1


@pytest.mark.parametrize('retries', [0, 1, 3])
def test_download_broken_every_time_makes_retries_plus_one_requests_with_growing_waits(
        emulator, retries):
    record = newest(emulator)
    client = signed_in(emulator, retries=retries)
    emulator.add_fault('download', 'drop_after', bytes=100, times=-1)

    with pytest.raises(TransportError) as caught:
        client.download(record['id'], Sink())

    assert 'broke off' in str(caught.value) and '/item/%d' % record['id'] in str(caught.value)
    assert counts(emulator)['download'] == retries + 1
    assert len(client.waits) == retries
    for attempt, wait in enumerate(client.waits):
        base = client_mod.BACKOFF_BASE * 2 ** attempt
        assert base <= wait <= base * 1.5  # doubling, plus up to half again of jitter


def test_backoff_jitter_differs_between_waits():
    waits = {client_mod.backoff_delay(2) for dummy in range(20)}

    assert len(waits) > 1
    assert all(2.0 <= wait <= 3.0 for wait in waits)


def test_backoff_without_retry_after_stops_doubling_at_its_ceiling():
    assert client_mod.backoff_delay(30) <= client_mod.BACKOFF_MAX * 1.5


def test_chunked_download_without_content_length_is_stored_whole(emulator):
    record = newest(emulator)
    client = signed_in(emulator)
    emulator.add_fault('download', 'chunked')
    sink = Sink()

    answer = client.download(record['id'], sink)

    assert answer['content_length'] is None
    assert bytes(sink.data) == emulator.archive_bytes(record['id'])
    assert counts(emulator)['download'] == 1


def test_chunked_download_cut_short_is_a_broken_download_not_a_short_archive(emulator):
    record = newest(emulator)
    client = signed_in(emulator, retries=0)
    emulator.add_fault('download', 'chunked', bytes=300)

    with pytest.raises(TransportError) as caught:
        client.download(record['id'], Sink())
    assert 'broke off' in str(caught.value)


def test_a_writer_failure_is_not_retried(emulator):
    record = newest(emulator)
    client = signed_in(emulator, retries=3)

    with pytest.raises(ArchiveError) as caught:
        client.download(record['id'], Sink(fail_after=10))

    assert 'No space left' in str(caught.value)
    assert counts(emulator)['download'] == 1


# --- busy answers ------------------------------------------------------------------------------

@pytest.mark.parametrize('route', ['token', 'list', 'download'])
@pytest.mark.parametrize('code', [429, 502, 503, 504])
def test_busy_answer_is_waited_out_and_the_request_repeated(emulator, route, code):
    record = newest(emulator)
    client = make_client(emulator, retries=1)
    emulator.reset()
    emulator.add_fault(route, 'status', code=code)

    client.list_exports()
    client.download(record['id'], Sink())

    assert counts(emulator)[route] == 2
    assert len(client.waits) == 1


@pytest.mark.parametrize('retries', [0, 1, 2, 3])
def test_download_kept_busy_makes_exactly_retries_plus_one_requests(emulator, retries):
    # One budget of retries per download: the repeats of a 503 and the restarts after a
    # broken stream must not multiply (they did: retries 3 made 16 requests).
    record = newest(emulator)
    client = signed_in(emulator, retries=retries)
    emulator.add_fault('download', 'status', code=503, retry_after=0, times=-1)

    with pytest.raises(TransportError) as caught:
        client.download(record['id'], Sink())

    assert caught.value.status == 503
    assert counts(emulator)['download'] == retries + 1
    assert len(client.waits) == retries


def test_busy_then_broken_download_shares_one_budget_of_retries(emulator):
    record = newest(emulator)
    client = signed_in(emulator, retries=2)
    emulator.add_faults({'on': 'download', 'kind': 'status', 'code': 503, 'retry_after': 0},
                        {'on': 'download', 'kind': 'drop_after', 'bytes': 10, 'times': -1})

    with pytest.raises(TransportError):
        client.download(record['id'], Sink())

    assert counts(emulator)['download'] == 3


@pytest.mark.parametrize('value, expected', [
    ('0', 0.0),
    ('7', 7.0),
    ('3600', client_mod.MAX_RETRY_WAIT),
    ('Thu, 01 Jan 1970 00:00:00 GMT', 0.0),
])
def test_retry_after_is_honoured_up_to_the_cap(emulator, value, expected):
    client = signed_in(emulator, retries=1)
    emulator.add_fault('list', 'status', code=503, retry_after=value)

    client.list_exports()

    assert client.waits == [expected]


def test_retry_after_as_http_date_waits_until_that_moment(emulator):
    client = signed_in(emulator, retries=1)
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    emulator.add_fault('download', 'status', code=429, retry_after=when)

    client.download(newest(emulator)['id'], Sink())

    (wait,) = client.waits
    assert 15 <= wait <= 20


def test_retry_after_a_day_ahead_is_capped_at_max_retry_wait(emulator):
    client = signed_in(emulator, retries=1)
    when = email.utils.formatdate(time.time() + 86400, usegmt=True)
    emulator.add_fault('list', 'status', code=503, retry_after=when)

    client.list_exports()

    assert client.waits == [client_mod.MAX_RETRY_WAIT] and client_mod.MAX_RETRY_WAIT == 60


def test_unreadable_retry_after_falls_back_to_backoff(emulator):
    client = signed_in(emulator, retries=1)
    emulator.add_fault('list', 'status', code=503, retry_after='soon')

    client.list_exports()

    (wait,) = client.waits
    assert client_mod.BACKOFF_BASE <= wait <= client_mod.BACKOFF_BASE * 1.5


@pytest.mark.parametrize('code, error', [
    (400, SecretServerError), (403, PermissionDeniedError), (404, NotFoundError),
    (405, SecretServerError), (409, SecretServerError), (410, SecretServerError),
    (422, SecretServerError), (500, SecretServerError),
])
@pytest.mark.parametrize('route', ['list', 'download'])
def test_other_errors_are_not_retried(emulator, route, code, error):
    client = signed_in(emulator, retries=3)
    emulator.add_fault(route, 'status', code=code, times=-1)

    with pytest.raises(error) as caught:
        if route == 'list':
            client.list_exports()
        else:
            client.download(newest(emulator)['id'], Sink())

    assert counts(emulator)[route] == 1
    assert client.waits == []
    assert caught.value.status == code and caught.value.url


def test_long_error_bodies_are_cut_in_the_message(emulator):
    client = signed_in(emulator, retries=0)
    emulator.add_fault('list', 'status', code=400, body={'message': 'x' * 10000})

    with pytest.raises(SecretServerError) as caught:
        client.list_exports()
    assert len(str(caught.value)) < 600


# --- tokens ------------------------------------------------------------------------------------

@pytest.mark.parametrize('route', ['list', 'download'])
def test_token_expired_between_calls_is_renewed_once_and_the_call_repeated(emulator, route):
    record = newest(emulator)
    client = signed_in(emulator)
    emulator.add_fault(route, 'expire_tokens')

    client.list_exports()
    sink = Sink()
    client.download(record['id'], sink)

    assert bytes(sink.data) == emulator.archive_bytes(record['id'])
    assert counts(emulator)['refresh'] == 1 and counts(emulator)['token'] == 0
    assert counts(emulator)[route] == 2


def test_rejected_refresh_token_falls_back_to_the_password_grant(emulator):
    client = signed_in(emulator)
    emulator.add_faults({'on': 'list', 'kind': 'expire_tokens'},
                        {'on': 'token', 'kind': 'status', 'code': 400,
                         'body': {'error': 'invalid_grant'}})

    assert client.list_exports()
    assert counts(emulator)['refresh'] == 1 and counts(emulator)['token'] == 1


@pytest.mark.parametrize('route', ['list', 'download'])
def test_second_401_is_an_authentication_failure_with_a_clear_message(emulator, route):
    client = signed_in(emulator)
    emulator.add_fault(route, 'status', code=401, times=2)

    with pytest.raises(AuthenticationError) as caught:
        if route == 'list':
            client.list_exports()
        else:
            client.download(newest(emulator)['id'], Sink())

    message = str(caught.value)
    assert 'refused the access token' in message and 'renewing it did not help' in message
    assert counts(emulator)[route] == 2


def test_expired_static_token_is_not_renewed_and_says_to_supply_a_fresh_one(emulator):
    token = make_client(emulator)._access_token()
    client = make_client(emulator, username=None, password=None, token=token)
    client.list_exports()
    emulator.reset()
    emulator.add_fault('list', 'expire_tokens')

    with pytest.raises(AuthenticationError) as caught:
        client.list_exports()
    assert 'cannot be renewed' in str(caught.value)
    assert counts(emulator)['list'] == 1


# --- slow and silent servers -------------------------------------------------------------------

@pytest.mark.parametrize('route', ['token', 'list', 'download'])
def test_server_silent_before_the_headers_times_out(emulator, route):
    client = make_client(emulator, retries=0, timeout=1)
    emulator.reset()
    emulator.add_fault(route, 'slow', delay=30)

    with pytest.raises(TransportError) as caught:
        client.list_exports()
        client.download(newest(emulator)['id'], Sink())
    assert 'timed out' in str(caught.value)


def test_download_stalled_mid_body_times_out_then_succeeds_on_retry(emulator):
    record = newest(emulator)
    client = signed_in(emulator, retries=1, timeout=1)
    emulator.add_fault('download', 'stall', bytes=200, delay=30)
    sink = Sink()

    client.download(record['id'], sink)

    assert bytes(sink.data) == emulator.archive_bytes(record['id'])
    assert counts(emulator)['download'] == 2


def test_connect_timeout_applies_when_the_server_never_accepts():
    # A listener whose accept queue is full drops new SYNs: connect() hangs on loopback,
    # exactly like a tenant behind a black-holing firewall.
    listener = socket.socket()
    fillers = []
    try:
        listener.bind(('127.0.0.1', 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for dummy in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(('127.0.0.1', port))
            fillers.append(filler)
        time.sleep(0.2)
        client = SecretServerClient('http://127.0.0.1:%d' % port, username='u', password='p',
                                    retries=0, timeout=1)
        with pytest.raises(TransportError) as caught:
            client.list_exports()
        assert 'timed out' in str(caught.value)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# --- answers that are not what the API promises ------------------------------------------------

@pytest.mark.parametrize('kind', ['drop_after', 'truncate', 'chunked_cut'])
@pytest.mark.parametrize('route', ['token', 'list'])
def test_json_answer_broken_off_is_retried_as_a_transport_failure(emulator, route, kind):
    # requests reads JSON answers inside request(); a reset there raised ChunkedEncodingError,
    # which escaped as a traceback instead of being retried.
    client = make_client(emulator, retries=1)
    emulator.reset()
    params = {'bytes': 10}
    emulator.add_fault(route, 'chunked' if kind == 'chunked_cut' else kind, **params)

    assert client.list_exports()
    assert counts(emulator)[route] == 2


@pytest.mark.parametrize('route', ['token', 'list'])
def test_json_answer_broken_off_every_time_is_a_transport_error(emulator, route):
    client = make_client(emulator, retries=1)
    emulator.reset()
    emulator.add_fault(route, 'drop_after', bytes=10, times=-1)

    with pytest.raises(TransportError) as caught:
        client.list_exports()
    assert 'broke off' in str(caught.value) and caught.value.url


@pytest.mark.parametrize('route, kind, words', [
    ('token', 'html200', 'HTML page'),
    ('token', 'invalid_json', 'not valid JSON'),
    ('token', 'corrupt', 'not valid JSON'),
    ('list', 'html200', 'HTML page'),
    ('list', 'invalid_json', 'not valid JSON'),
    ('list', 'corrupt', 'not valid JSON'),
    ('list', 'no_records', 'no records list'),
    ('list', 'bad_records', 'not a whole number'),
    ('download', 'html200', 'HTML page'),
])
def test_answers_of_the_wrong_shape_are_protocol_errors_naming_the_url(
        emulator, route, kind, words):
    client = make_client(emulator, retries=3)
    emulator.reset()
    emulator.add_fault(route, kind)

    with pytest.raises(ProtocolError) as caught:
        client.list_exports()
        client.download(newest(emulator)['id'], Sink())

    assert words in str(caught.value)
    assert '(URL: http://127.0.0.1:' in str(caught.value)
    assert counts(emulator)[route] == 1  # a wrong answer is not retried
