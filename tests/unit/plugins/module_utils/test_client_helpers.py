# -*- coding: utf-8 -*-
"""The parts of the client that need no server: URLs, Retry-After, backoff."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.secretserver.backup.plugins.module_utils import client
from ansible_collections.secretserver.backup.plugins.module_utils.errors import SecretServerError


@pytest.mark.parametrize('given, expected', [
    ('https://t.secretservercloud.com', 'https://t.secretservercloud.com'),
    ('https://t.secretservercloud.com/', 'https://t.secretservercloud.com'),
    ('https://t.secretservercloud.com/api/v1', 'https://t.secretservercloud.com'),
    ('https://t.secretservercloud.com/api/v1/', 'https://t.secretservercloud.com'),
    ('https://host/SecretServer', 'https://host/SecretServer'),
    ('https://host/SecretServer/API/V1', 'https://host/SecretServer'),
    ('  http://127.0.0.1:8080/  ', 'http://127.0.0.1:8080'),
])
def test_base_url_keeps_sub_path_and_drops_trailing_slash_and_api_suffix(given, expected):
    assert client.normalize_base_url(given) == expected


@pytest.mark.parametrize('given', ['t.secretservercloud.com', 'ftp://host', '', None,
                                   'https://host/?a=1', 'https://'])
def test_base_url_without_http_scheme_or_host_fails_with_example(given):
    with pytest.raises(SecretServerError) as caught:
        client.normalize_base_url(given)
    assert 'base_url' in str(caught.value)


def test_join_url_never_doubles_slashes_and_keeps_sub_path():
    assert client.join_url('https://h/SecretServer/', '/api/v1/', 'configuration') == \
        'https://h/SecretServer/api/v1/configuration'


def test_retry_after_reads_seconds_and_http_dates():
    assert client.retry_after_seconds('7') == 7.0
    assert client.retry_after_seconds('Wed, 21 Oct 2015 07:28:05 GMT', now=1445412480) == 5.0
    assert client.retry_after_seconds('Wed, 21 Oct 2015 07:28:00 GMT', now=1445412490) == 0.0
    assert client.retry_after_seconds('soon') is None
    assert client.retry_after_seconds(None) is None


def test_backoff_doubles_with_jitter_and_caps_retry_after():
    for attempt in range(4):
        base = client.BACKOFF_BASE * 2 ** attempt
        assert base <= client.backoff_delay(attempt) <= base * 1.5
    assert client.backoff_delay(0, retry_after=3600) == client.MAX_RETRY_WAIT
    assert client.backoff_delay(5, retry_after=2) == 2


def test_connection_argspec_reads_tss_environment_and_hides_secrets():
    spec = client.connection_argument_spec(extra=dict(type='int'))
    assert spec['password']['no_log'] and spec['token']['no_log']
    envs = {name: opts['fallback'][1][0] for name, opts in spec.items() if 'fallback' in opts}
    assert envs == {'base_url': 'TSS_BASE_URL', 'username': 'TSS_USERNAME',
                    'password': 'TSS_PASSWORD', 'domain': 'TSS_DOMAIN', 'token': 'TSS_TOKEN',
                    'api_path_uri': 'TSS_API_PATH_URI', 'token_path_uri': 'TSS_TOKEN_PATH_URI'}
    assert 'extra' in spec and 'extra' not in client.CONNECTION_ARGSPEC
