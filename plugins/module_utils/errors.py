# -*- coding: utf-8 -*-
# Copyright: contributors to the secretserver.backup collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Errors raised by the shared client and the archive helpers.

Modules catch SecretServerError and hand str(error) to fail_json: every message already says
what failed, where, and what to check next, so no module has to add context of its own.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class SecretServerError(Exception):
    """Base class: a failure the operator can act on, never a bug."""

    kind = 'error'

    def __init__(self, msg, url=None, status=None, hint=None):
        super(SecretServerError, self).__init__(msg)
        self.msg = msg
        self.url = url
        self.status = status
        self.hint = hint

    def __str__(self):
        text = self.msg
        if self.url:
            text += ' (URL: %s' % self.url
            text += ', HTTP %s)' % self.status if self.status else ')'
        if self.hint:
            text += '. ' + self.hint
        return text

    def to_result(self):
        """The keys every module adds to its failure result."""
        return {'error': {'kind': self.kind, 'url': self.url, 'status': self.status}}


class AuthenticationError(SecretServerError):
    """The tenant refused the credentials or the access token."""

    kind = 'authentication'


class PermissionDeniedError(SecretServerError):
    """The account signed in but lacks a permission (HTTP 403 API_AccessDenied)."""

    kind = 'permission'


class NotFoundError(SecretServerError):
    """The URL or the export does not exist."""

    kind = 'not_found'


class TransportError(SecretServerError):
    """The connection failed, timed out or broke off; worth retrying."""

    kind = 'transport'


class TLSError(TransportError):
    """The server certificate could not be verified."""

    kind = 'tls'


class ProtocolError(SecretServerError):
    """The server answered, but not in the shape the API promises."""

    kind = 'protocol'


class ArchiveError(SecretServerError):
    """A local problem with the destination or an archive: nothing was stored."""

    kind = 'archive'
