"""Offline emulator of Secret Server Cloud's automatic export storage API (a test tool).

It serves the OAuth token endpoint, the auto-export storage list and archive downloads, the
Delinea Platform token and vault broker endpoints, and a control API under ``/_emulator/``
that tests use to reshape the data set and inject faults.  See README.md beside this file.

Run ``python tests/emulator/server.py --help``, or import it and use :class:`Emulator`.
Needs Python 3.11, ``pyzipper`` and (for ``--tls``) ``cryptography``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import math
import os
import random
import secrets as secrets_mod
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape as xml_escape

import pyzipper

# Bump when the archive layout changes so stale cached archives are not reused.
ARCHIVE_FORMAT = 3

DEFAULT_EXPORT_PASSWORD = "export-password"
WRONG_EXPORT_PASSWORD = "not-the-export-password"
DOMAIN = "EXAMPLE"
VAULT_PATH = "/vault1/SecretServer"
DEFAULT_PAGE = 10

USERS = {
    "backup": ("backup-password", frozenset({"view", "download"})),
    "viewer": ("viewer-password", frozenset({"view"})),
    "nobody": ("nobody-password", frozenset()),
}
PLATFORM_CLIENTS = {"svc-backup": ("svc-backup-secret", frozenset({"view", "download"}))}

MSG_AUTH_FAILED = {"message": "Authentication failed."}
MSG_ACCESS_DENIED = {"errorCode": "API_AccessDenied", "message": "Access Denied"}

FAULT_TARGETS = ("download", "list", "token", "vaults", "platform_token", "any")
# Which request categories each fault kind can act on; a fault waits for a request it fits.
ANY_ROUTE = frozenset({"token", "refresh", "list", "download", "platform_token", "vaults", "other"})
FAULT_KINDS = {
    "drop_after": ANY_ROUTE, "truncate": ANY_ROUTE, "chunked": ANY_ROUTE,
    "corrupt": ANY_ROUTE, "status": ANY_ROUTE, "expire_tokens": ANY_ROUTE,
    "slow": ANY_ROUTE, "stall": ANY_ROUTE, "html200": ANY_ROUTE, "invalid_json": ANY_ROUTE,
    "noxml": frozenset({"download"}), "flip_byte": frozenset({"download"}),
    "no_records": frozenset({"list"}), "bad_records": frozenset({"list"}),
}
ARCHIVE_KINDS = ("valid", "corrupt", "noxml", "wrongpassword")

SIGN_IN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign In</title></head><body>\n"
    b"<h1>Secret Server</h1>\n<form method=\"post\" action=\"login.aspx\">\n"
    b"<input name=\"username\"><input name=\"password\" type=\"password\">\n"
    b"<button type=\"submit\">Sign In</button></form></body></html>\n"
)
GARBAGE_JSON = b'{"records": [{"id": 1, "filename": "secret-server-export-2021'
CORRUPT_HEAD = b"EMULATOR CORRUPT ARCHIVE: these bytes are not a ZIP file.\n"


class ControlError(ValueError):
    """A control API request that cannot be honoured (answered with HTTP 400)."""


# --------------------------------------------------------------------------- data set

def storage_date(moment: dt.datetime, digits: int) -> str:
    """Format like .NET does for a zone-less DateTime: 0-7 fraction digits, no trailing zero."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits <= 0:
        return text
    ticks = f"{moment.microsecond * 10 + moment.second % 7 + 1:07d}"[:digits]
    # .NET trims trailing zeros, so keep the last shown digit non-zero.
    if ticks[-1] == "0":
        ticks = ticks[:-1] + "5"
    return f"{text}.{ticks}"


FRACTION_DIGITS = (2, 7, 0, 3, 7, 2, 0, 5, 1, 6, 4, 2)


def export_ids(count: int) -> list[int]:
    """Ids in an order unrelated to dates, so clients that sort by id pick the wrong export."""
    ids = random.Random(f"ids:{count}").sample(range(100, 100 + 4 * count), count)
    if count > 1 and ids[0] == max(ids):
        ids[0], ids[-1] = ids[-1], ids[0]
    return ids


def default_not_downloadable(ids: list[int]) -> list[int]:
    if len(ids) >= 3:
        return [ids[2]]
    return ids[1:2]


def anchor_time(newest_age_hours: float | None) -> dt.datetime:
    """The newest export's time, whole seconds, never later than now (fractions get added)."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    if newest_age_hours is None:
        # On the hour keeps filenames stable across restarts so cached archives are reused.
        anchor = now.replace(minute=0, second=2, microsecond=0)
        return anchor if anchor + dt.timedelta(seconds=1) <= now else anchor - dt.timedelta(hours=1)
    moment = now - dt.timedelta(hours=float(newest_age_hours), seconds=1)
    return moment.replace(microsecond=0)


def generate_records(count: int, configurations: list, interval_hours: float,
                     newest_age_hours: float | None, ids: list | None,
                     not_downloadable: list | None, newest_not_downloadable: bool,
                     seed: str) -> list[dict]:
    ids = list(ids) if ids is not None else export_ids(count)
    if len(ids) != count:
        raise ControlError("ids must have exactly count entries")
    blocked = set(default_not_downloadable(ids) if not_downloadable is None
                  else not_downloadable)
    rng = random.Random(f"dates:{seed}")
    newest = anchor_time(newest_age_hours)
    records = []
    for index, export_id in enumerate(ids):
        moment = newest - dt.timedelta(hours=interval_hours * index)
        moment = moment.replace(microsecond=rng.randrange(1, 999_999))
        records.append({
            "id": export_id,
            "autoExportConfigurationId": configurations[index % len(configurations)],
            "storageDate": storage_date(moment, FRACTION_DIGITS[index % len(FRACTION_DIGITS)]),
            "filename": "secret-server-export-" + moment.strftime("%Y%m%d%H%M%S"),
            "canDownload": export_id not in blocked
            and not (index == 0 and newest_not_downloadable),
        })
    return records


def record_key(record) -> str | None:
    """The id as it appears decoded in a download URL, or None if it cannot name one."""
    if not isinstance(record, dict):
        return None
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    text = str(value)
    return text if text else None


def entry_name(record: dict) -> str:
    name = record.get("filename")
    if name is None:
        name = f"export-{record_key(record)}"
    return f"{name}.xml"


# --------------------------------------------------------------------------- export XML

FOLDER_NAMES = ("Finance", "Engineering", "Operations", "Legal & Compliance",
                "Human Resources", "Infrastructure", "Security")
TEMPLATES = {
    "Password": ("Resource", "Username", "Password", "Notes"),
    "Windows Account": ("Machine", "Username", "Password", "Notes"),
    "Web Password": ("URL", "Username", "Password", "Notes"),
}
CDATA_FIELDS = {"Password", "Notes"}
XML_HEAD = ('<?xml version="1.0" encoding="utf-8"?>\n<ImportFile '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n')
XML_TAIL = "</ImportFile>\n"


def folder_paths(count: int) -> list[tuple[str, str]]:
    folders = []
    for index in range(count):
        name = FOLDER_NAMES[index % len(FOLDER_NAMES)]
        if index >= len(FOLDER_NAMES):
            name = f"{name} {index // len(FOLDER_NAMES) + 1}"
        # Every third folder is nested so clients meet multi-level FolderPath values.
        parent = folders[0][1] if index % 3 == 2 else ""
        folders.append((name, f"{parent}\\{name}"))
    return folders


def field_value(field_name: str, number: int, marker: str) -> str:
    values = {
        "Resource": f"https://app{number}.example.test/login?next=/home&amp;id={marker}",
        "URL": f"https://portal{number}.example.test/?a=1&amp;b={marker}",
        "Machine": f"srv-{number:03d}.corp.example.test {marker}",
        "Username": f"svc_user{number}-{marker}",
        "Password": f"P@ss<{number}>&'\"{marker}!",
        "Notes": f"Rotated quarterly.\nOwner: team {number} <ops> & more\n{marker}\n",
    }
    value = values[field_name]
    if field_name in CDATA_FIELDS:
        return f"<![CDATA[{value}]]>"
    return value


def permissions_xml(indent: str, folder: bool) -> str:
    role = "<FolderAccessRoleName>Owner</FolderAccessRoleName>" if folder else ""
    return (f"{indent}<Permissions>\n{indent}  <Permission>{role}"
            "<SecretAccessRoleName>Owner</SecretAccessRoleName>"
            "<GroupName>Administrators</GroupName><UserName /></Permission>\n"
            f"{indent}</Permissions>\n")


def folders_xml(folders: list[tuple[str, str]]) -> str:
    if not folders:
        return "  <Folders />\n"
    parts = ["  <Folders>\n"]
    template_names = list(TEMPLATES)
    for index, (name, path) in enumerate(folders):
        mapped = template_names[index % len(template_names)]
        types = ("      <MappedSecretTypes />\n" if index % 2 else
                 f"      <MappedSecretTypes><SecretTypeName>{mapped}</SecretTypeName>"
                 "</MappedSecretTypes>\n")
        parts.append(f"    <Folder>\n      <FolderName>{xml_escape(name)}</FolderName>\n"
                     f"      <FolderPath>{xml_escape(path)}</FolderPath>\n"
                     + permissions_xml("      ", True) + types + "    </Folder>\n")
    parts.append("  </Folders>\n")
    return "".join(parts)


def templates_xml() -> str:
    parts = ["  <SecretTemplates>\n"]
    for name, fields in TEMPLATES.items():
        items = "".join(
            f"<Field><DisplayName>{f}</DisplayName><FieldSlugName>{f.lower()}</FieldSlugName>"
            f"<IsPassword>{str(f == 'Password').lower()}</IsPassword></Field>" for f in fields)
        parts.append(f"    <SecretTemplate><Name>{name}</Name><Fields>{items}</Fields>"
                     "</SecretTemplate>\n")
    parts.append("  </SecretTemplates>\n")
    return "".join(parts)


def secrets_xml(count: int, folders: list[tuple[str, str]], token: str) -> tuple[str, list]:
    if not count:
        return "  <Secrets />\n", []
    parts, markers = ["  <Secrets>\n"], []
    template_names = list(TEMPLATES)
    for index in range(count):
        template = template_names[index % len(template_names)]
        folder_name, folder_path = folders[index % len(folders)] if folders else ("", "")
        items = []
        for field_name in TEMPLATES[template]:
            marker = f"PLAINTEXT-{len(markers) + 1}-{token}"
            markers.append(marker)
            items.append(f"        <SecretItem><FieldName>{field_name}</FieldName>"
                         f"<Slug>{field_name.lower()}</Slug>"
                         f"<Value>{field_value(field_name, index + 1, marker)}</Value>"
                         "</SecretItem>\n")
        title = xml_escape(f"{template} {index + 1} ({folder_name or 'root'})")
        parts.append(f"    <Secret>\n      <SecretName>{title}</SecretName>\n"
                     f"      <SecretTemplateName>{template}</SecretTemplateName>\n"
                     f"      <FolderPath>{xml_escape(folder_path)}</FolderPath>\n"
                     "      <SiteId>1</SiteId>\n" + permissions_xml("      ", False)
                     + "      <SecretItems>\n" + "".join(items) + "      </SecretItems>\n"
                     "    </Secret>\n")
    parts.append("  </Secrets>\n")
    return "".join(parts), markers


def export_xml_body(secret_count: int, folder_count: int, seed: int) -> tuple[str, list]:
    """The export XML without its closing tag, and the plaintext markers inside it."""
    token = f"{random.Random(seed).getrandbits(48):012x}"
    folders = folder_paths(folder_count)
    secret_part, markers = secrets_xml(secret_count, folders, token)
    templates = templates_xml() if secret_count else ""
    return XML_HEAD + folders_xml(folders) + templates + secret_part, markers


# --------------------------------------------------------------------------- archives

PAD_OPEN, PAD_CLOSE = b"  <EmulatorPadding>\n", b"  </EmulatorPadding>\n"
BLOCK_OPEN, BLOCK_CLOSE = b"    <Block>", b"</Block>\n"
BLOCK_PAYLOAD = 65536  # base64 characters per block; keeps XML text nodes parser friendly
BLOCKS_PER_WRITE = 64


def padding_chunks(rng: random.Random, budget: int):
    """Yield exactly `budget` bytes of XML holding random base64 text (incompressible)."""
    if budget < len(PAD_OPEN) + len(PAD_CLOSE):
        yield b"\n" * max(budget, 0)
        return
    yield PAD_OPEN
    remaining = budget - len(PAD_OPEN) - len(PAD_CLOSE)
    frame = len(BLOCK_OPEN) + len(BLOCK_CLOSE)
    while remaining > 0:
        if remaining <= frame:
            yield b"\n" * remaining
            break
        blocks = min(BLOCKS_PER_WRITE, math.ceil(remaining / (BLOCK_PAYLOAD + frame)))
        text = base64.b64encode(rng.randbytes(blocks * BLOCK_PAYLOAD * 3 // 4))
        parts = []
        for index in range(blocks):
            size = min(BLOCK_PAYLOAD, remaining - frame)
            if size <= 0:
                break
            start = index * BLOCK_PAYLOAD
            parts += [BLOCK_OPEN, text[start:start + size], BLOCK_CLOSE]
            remaining -= size + frame
        yield b"".join(parts)
    yield PAD_CLOSE


@dataclass
class ArchivePlan:
    """What one export's archive holds; archives are built from it on demand and cached."""
    key: str
    entry: str
    kind: str
    seed: int
    secrets: int
    folders: int
    password: str
    archive_size: int | None
    date_time: tuple
    _markers: list | None = field(default=None, repr=False)

    @property
    def markers(self) -> list:
        """The plaintext markers inside this plan's XML, worked out on first use only."""
        if self._markers is None:
            self._markers = export_xml_body(self.secrets, self.folders, self.seed)[1]
        return self._markers

    def cache_name(self, kind: str) -> str:
        parts = [ARCHIVE_FORMAT, kind, self.key, self.entry, self.seed, self.secrets,
                 self.folders, self.password, self.archive_size, list(self.date_time)]
        digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
        return f"{digest}.zip"


def zip_name_ok(name: str) -> bool:
    """Whether a ZIP entry can carry this name (UTF-8, at most 65535 bytes)."""
    try:
        return len(name.encode("utf-8")) <= 65535
    except UnicodeEncodeError:
        return False


def zip_date_time(record: dict) -> tuple:
    text = record.get("storageDate")
    try:
        moment = dt.datetime.fromisoformat(str(text)[:19])
        # ZIP timestamps only cover 1980-2107.
        return (min(max(moment.year, 1980), 2107),) + moment.timetuple()[1:6]
    except ValueError:
        return (2021, 1, 1, 0, 0, 0)


def write_aes_entry(path: str, password: str, name: str, date_time: tuple, chunks,
                    stored: bool, force_zip64: bool) -> None:
    method = pyzipper.ZIP_STORED if stored else pyzipper.ZIP_DEFLATED
    with pyzipper.AESZipFile(path, "w", compression=method, encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(password.encode("utf-8"))
        zf.setencryption(pyzipper.WZ_AES, nbits=256)
        info = zf.zipinfo_cls(name, date_time=date_time)
        info.compress_type = method
        info.external_attr = 0o600 << 16
        with zf.open(info, "w", force_zip64=force_zip64) as out:
            for chunk in chunks:
                out.write(chunk)


def build_export_archive(plan: ArchivePlan, path: str, password: str) -> None:
    body, dummy = export_xml_body(plan.secrets, plan.folders, plan.seed)
    head, tail = body.encode("utf-8"), XML_TAIL.encode()
    name_len = len(plan.entry.encode("utf-8"))
    # Local + central headers, AES extras, salt, verifier, MAC and end record.
    overhead = 2 * name_len + 2 * 11 + 30 + 46 + 22 + 28
    budget = (plan.archive_size or 0) - len(head) - len(tail) - overhead
    if plan.archive_size and budget > 1024:
        force_zip64 = plan.archive_size > (1 << 31) - (1 << 24)
        budget -= 40 if force_zip64 else 0
        chunks = [head, *padding_chunks(random.Random(plan.seed), budget), tail]
        write_aes_entry(path, password, plan.entry, plan.date_time, _flatten(chunks), True,
                        force_zip64)
        return
    write_aes_entry(path, password, plan.entry, plan.date_time, [head + tail], False, False)


def _flatten(items):
    for item in items:
        if isinstance(item, bytes):
            yield item
        else:
            yield from item


def build_archive(plan: ArchivePlan, kind: str, path: str) -> None:
    if kind == "valid":
        build_export_archive(plan, path, plan.password)
    elif kind == "wrongpassword":
        build_export_archive(plan, path, WRONG_EXPORT_PASSWORD)
    elif kind == "noxml":
        text = f"This archive deliberately holds no {plan.entry}.\n".encode("utf-8")
        name = plan.entry[:-4] + ".txt" if plan.entry.endswith(".xml") else "readme.txt"
        write_aes_entry(path, plan.password, name, plan.date_time, [text], False, False)
    elif kind == "corrupt":
        with open(path, "wb") as out:
            out.write(CORRUPT_HEAD + random.Random(plan.seed).randbytes(4096))
    else:
        raise ControlError(f"unknown archive kind {kind!r}")


class ArchiveStore:
    """Builds archives into the state dir once per plan and kind, then serves the files."""

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def path(self, plan: ArchivePlan, kind: str | None = None) -> str:
        kind = kind or plan.kind
        target = os.path.join(self.directory, plan.cache_name(kind))
        if os.path.exists(target):
            return target
        with self._guard:
            lock = self._locks.setdefault(target, threading.Lock())
        with lock:
            if not os.path.exists(target):
                temp = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
                try:
                    build_archive(plan, kind, temp)
                    os.replace(temp, target)
                finally:
                    if os.path.exists(temp):
                        os.unlink(temp)
        return target


def xml_ciphertext_offset(path: str) -> int | None:
    """Offset of a byte in the middle of the first entry's encrypted data."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.infolist()[0]
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            header = handle.read(30)
    except (zipfile.BadZipFile, IndexError, OSError):
        return None
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len + 18  # skip AES-256 salt+verifier
    cipher_len = max(info.compress_size - 28, 1)
    return start + cipher_len // 2


# --------------------------------------------------------------------------- tokens, faults

@dataclass
class Token:
    value: str
    kind: str  # access | refresh | platform
    principal: str
    perms: frozenset
    expires: float
    revoked: bool = False

    def usable(self) -> bool:
        return not self.revoked and time.monotonic() < self.expires


@dataclass
class Fault:
    on: str
    kind: str
    times: int
    params: dict

    def fits(self, category: str) -> bool:
        target = "token" if category == "refresh" else category
        if self.on not in ("any", target):
            return False
        return category in FAULT_KINDS[self.kind] and self.times != 0

    def describe(self) -> dict:
        return {"on": self.on, "kind": self.kind, "times": self.times, **self.params}


def parse_fault(raw) -> Fault:
    if not isinstance(raw, dict):
        raise ControlError("each fault must be an object")
    params = dict(raw)
    on, kind = params.pop("on", "any"), params.pop("kind", None)
    times = params.pop("times", 1)
    if on not in FAULT_TARGETS:
        raise ControlError(f"fault 'on' must be one of {FAULT_TARGETS}")
    if kind not in FAULT_KINDS:
        raise ControlError(f"fault 'kind' must be one of {sorted(FAULT_KINDS)}")
    if not isinstance(times, int) or times == 0 or times < -1:
        raise ControlError("fault 'times' must be a positive integer or -1")
    code = params.get("code")
    if kind == "status" and not (isinstance(code, int) and 200 <= code <= 599):
        raise ControlError("a status fault needs an integer 'code' from 200 to 599")
    return Fault(on, kind, times, params)


@dataclass
class Export:
    record: object
    plan: ArchivePlan | None
    generated: bool


# --------------------------------------------------------------------------- state

class EmulatorState:
    """Everything the handlers share; every public method is safe to call from any thread."""

    def __init__(self, opts: dict, state_dir: str):
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.state_dir = state_dir
        self.root_url = ""
        self.token_ttl = float(opts.get("token_ttl", 1200))
        self.refresh_ttl = float(opts.get("refresh_ttl", 86400))
        self.take_cap = int(opts.get("take_cap", 500))
        self.defaults = {
            "count": int(opts.get("exports", 12)), "configurations": [1, 2],
            "interval_hours": 24.0, "archive_size": opts.get("archive_size"),
            "secrets": int(opts.get("secrets", 5)), "folders": int(opts.get("folders", 3)),
            "password": opts.get("password", DEFAULT_EXPORT_PASSWORD),
        }
        self.seed = self._dataset_seed()
        self.store = ArchiveStore(os.path.join(state_dir, "archives"))
        self.exports: list[Export] = []
        self.tokens: dict[str, Token] = {}
        self.tokens_issued: list[str] = []
        self.custom_vaults = None
        self.reset()

    def _dataset_seed(self) -> str:
        """Persist the seed so a restart on the same state dir rebuilds nothing."""
        path = os.path.join(self.state_dir, "seed")
        try:
            with open(path, encoding="ascii") as handle:
                return handle.read().strip()
        except FileNotFoundError:
            value = secrets_mod.token_hex(8)
            with open(path, "w", encoding="ascii") as handle:
                handle.write(value)
            return value

    # ---- control operations (shared by the HTTP control API and the Python helpers)

    def reset(self) -> dict:
        with self.lock:
            self.requests: list[dict] = []
            self.counts = dict.fromkeys(
                ("token", "refresh", "list", "download", "platform_token", "vaults", "other"), 0)
            self.bearer_hosts: list[str] = []
            self.faults: list[Fault] = []
        return {"reset": True}

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "requests": [dict(entry) for entry in self.requests],
                "counts": dict(self.counts),
                "bearer_hosts": list(self.bearer_hosts),
                "tokens_issued": list(self.tokens_issued),
                "markers": self.markers(),
                "faults": [fault.describe() for fault in self.faults if fault.times != 0],
            }

    def markers(self) -> list[str]:
        with self.lock:
            found = []
            for export in self.exports:
                if export.plan and export.plan.kind in ("valid", "wrongpassword"):
                    found.extend(export.plan.markers)
            return list(dict.fromkeys(found))

    def set_exports(self, body: dict) -> dict:
        spec = {**self.defaults, **{k: v for k, v in body.items() if v is not None}}
        try:
            count = int(spec["count"])
            configurations = list(spec["configurations"]) or [1]
            records = generate_records(
                count, configurations, float(spec["interval_hours"]),
                body.get("newest_age_hours"), body.get("ids"), body.get("not_downloadable"),
                bool(body.get("newest_not_downloadable")), self.seed)
        except (TypeError, ValueError, KeyError) as exc:
            raise ControlError(f"bad export spec: {exc}") from exc
        exports = [Export(rec, self._plan(rec, "valid", spec), True) for rec in records]
        self._install(exports, eager_newest=True)
        return {"records": self.records()["records"]}

    def set_records(self, body: dict) -> dict:
        records, kind = body.get("records"), body.get("archive", "valid")
        if not isinstance(records, list):
            raise ControlError("'records' must be a list")
        if kind not in ARCHIVE_KINDS:
            raise ControlError(f"'archive' must be one of {ARCHIVE_KINDS}")
        spec = {**self.defaults, **{k: body[k] for k in ("archive_size", "secrets", "folders",
                                                         "password") if k in body}}
        exports = []
        for record in records:
            servable = record_key(record) and zip_name_ok(entry_name(record))
            plan = self._plan(record, kind, spec) if servable else None
            exports.append(Export(record, plan, False))
        self._install(exports, eager_newest=False)
        return {"records": self.records()["records"]}

    def records(self) -> dict:
        with self.lock:
            return {"records": [export.record for export in self.exports]}

    def set_faults(self, body: dict) -> dict:
        raw = body.get("faults")
        if not isinstance(raw, list):
            raise ControlError("'faults' must be a list")
        parsed = [parse_fault(item) for item in raw]
        with self.lock:
            self.faults.extend(parsed)
            return {"faults": [fault.describe() for fault in self.faults if fault.times != 0]}

    def set_vaults(self, body: dict) -> dict:
        vaults = body.get("vaults")
        if vaults is not None and not isinstance(vaults, list):
            raise ControlError("'vaults' must be a list (or null for the default list)")
        with self.lock:
            self.custom_vaults = vaults
        return {"vaults": self.vaults()}

    def configure(self, body: dict) -> dict:
        with self.lock:
            if "token_ttl" in body:
                self.token_ttl = float(body["token_ttl"])
            if "refresh_ttl" in body:
                self.refresh_ttl = float(body["refresh_ttl"])
            if "take_cap" in body:
                self.take_cap = int(body["take_cap"])
            return {"token_ttl": self.token_ttl, "refresh_ttl": self.refresh_ttl,
                    "take_cap": self.take_cap}

    def archive_path(self, key: str) -> str | None:
        export = self.find_export(key)
        if export is None or export.plan is None:
            return None
        return self.store.path(export.plan)

    # ---- helpers

    def _plan(self, record: dict, kind: str, spec: dict) -> ArchivePlan:
        key, entry = record_key(record), entry_name(record)
        seed_text = f"{self.seed}:{key}:{entry}"
        seed = int.from_bytes(hashlib.sha256(seed_text.encode("utf-8")).digest()[:8], "big")
        size = spec.get("archive_size")
        return ArchivePlan(key, entry, kind, seed, int(spec["secrets"]), int(spec["folders"]),
                           str(spec["password"]), int(size) if size else None,
                           zip_date_time(record))

    def _install(self, exports: list[Export], eager_newest: bool) -> None:
        plans = [export.plan for export in exports if export.plan]
        # Every archive waits for its first download (or archive_bytes call): even small
        # ones take milliseconds each, which is minutes for a data set of 10,000 exports.
        # The newest is the exception, as it is what a backup run fetches first.
        if eager_newest and plans:
            self.store.path(plans[0])
        with self.lock:
            self.exports = exports

    def find_export(self, key: str) -> Export | None:
        with self.lock:
            for export in self.exports:
                if export.plan and export.plan.key == key:
                    return export
        return None

    def vaults(self) -> list:
        with self.lock:
            if self.custom_vaults is not None:
                return self.custom_vaults
        return default_vaults(self.root_url)

    def take_fault(self, category: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.fits(category):
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    def issue(self, kind: str, principal: str, perms: frozenset) -> str:
        value = secrets_mod.token_urlsafe(32)
        ttl = self.refresh_ttl if kind == "refresh" else self.token_ttl
        with self.lock:
            self.tokens[value] = Token(value, kind, principal, perms, time.monotonic() + ttl)
            self.tokens_issued.append(value)
        return value

    def token(self, value: str | None, kinds: tuple) -> Token | None:
        with self.lock:
            found = self.tokens.get(value or "")
        if found and found.kind in kinds and found.usable():
            return found
        return None

    def expire_access_tokens(self) -> None:
        with self.lock:
            for token in self.tokens.values():
                if token.kind != "refresh":
                    token.revoked = True

    def log(self, entry: dict, category: str) -> None:
        with self.lock:
            self.requests.append(entry)
            self.counts[category] = self.counts.get(category, 0) + 1
            if entry["bearer"] and entry["host"] not in self.bearer_hosts:
                self.bearer_hosts.append(entry["host"])


def default_vaults(root_url: str) -> list[dict]:
    parts = urllib.parse.urlsplit(root_url)
    other = "127.0.0.3" if parts.hostname == "127.0.0.2" else "127.0.0.2"
    other_url = f"{parts.scheme}://{other}:{parts.port}/vault2/SecretServer"
    return [
        {"vaultId": "5d0c1c55-0000-4000-8000-00000000dec0", "name": "Retired default vault",
         "type": "SecretServer", "isDefault": True, "isActive": False,
         "connection": {"url": f"{root_url}/vault0/SecretServer", "oAuthProfileId": "retired"}},
        {"vaultId": "5d0c1c55-0000-4000-8000-00000000dec2", "name": "Secondary vault",
         "type": "SecretServer", "isDefault": False, "isActive": True,
         "connection": {"url": other_url, "oAuthProfileId": "secondary"}},
        {"vaultId": "5d0c1c55-0000-4000-8000-000000000001", "name": "Primary vault",
         "type": "SecretServer", "isDefault": True, "isActive": True,
         "connection": {"url": f"{root_url}{VAULT_PATH}", "oAuthProfileId": "primary"}},
    ]


# --------------------------------------------------------------------------- responses

@dataclass
class Body:
    """A response body made of in-memory pieces and file ranges, so big files use sendfile."""
    segments: list  # bytes, or (path, offset, length)

    @property
    def length(self) -> int:
        return sum(len(s) if isinstance(s, bytes) else s[2] for s in self.segments)

    @classmethod
    def of_file(cls, path: str) -> "Body":
        return cls([(path, 0, os.path.getsize(path))])

    def pieces(self, start: int, end: int):
        """Yield the segments clipped to the byte range [start, end)."""
        position = 0
        for segment in self.segments:
            size = len(segment) if isinstance(segment, bytes) else segment[2]
            low, high = max(start - position, 0), min(end - position, size)
            if low < high:
                if isinstance(segment, bytes):
                    yield segment[low:high]
                else:
                    yield (segment[0], segment[1] + low, high - low)
            position += size


@dataclass
class Response:
    status: int
    body: Body
    content_type: str = "application/json; charset=utf-8"
    headers: list = field(default_factory=list)


def json_response(status: int, payload, headers=()) -> Response:
    data = json.dumps(payload).encode("utf-8")
    return Response(status, Body([data]), headers=list(headers))


def flipped_body(path: str) -> Body:
    size = os.path.getsize(path)
    offset = xml_ciphertext_offset(path)
    if offset is None or offset >= size:
        offset = size // 2
    with open(path, "rb") as handle:
        handle.seek(offset)
        original = handle.read(1) or b"\0"
    flipped = bytes([original[0] ^ 0x5A])
    return Body([(path, 0, offset), flipped, (path, offset + 1, size - offset - 1)])


def bad_records() -> list:
    return [
        {"id": "not-a-number", "storageDate": 12345, "canDownload": "yes"},
        {"autoExportConfigurationId": 1, "filename": None},
        {"id": None, "storageDate": "not a date", "filename": ["list"], "canDownload": None},
        "a bare string",
        42,
        {"id": 1.5, "storageDate": "2021-13-45T99:99:99", "filename": {"nested": True}},
        {"id": -7, "autoExportConfigurationId": "one", "storageDate": None, "canDownload": 1},
    ]


# --------------------------------------------------------------------------- paging

class BadRequest(Exception):
    pass


def paging_int(query: dict, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"The value '{raw}' is not valid for {name}.") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative.")
    return value


def sort_specs(query: dict) -> list[dict]:
    specs: dict[int, dict] = {}
    for name, value in query.items():
        lowered = name.lower()
        if not lowered.startswith("sortby[") or "]." not in lowered:
            continue
        index_text, attribute = lowered[7:].split("].", 1)
        if index_text.isdigit() and attribute in ("name", "direction", "priority"):
            specs.setdefault(int(index_text), {})[attribute] = value
    ordered = []
    for index in sorted(specs):
        spec = specs[index]
        if spec.get("name"):
            priority = spec.get("priority", str(index))
            ordered.append({"name": spec["name"], "direction": spec.get("direction", "asc"),
                            "priority": int(priority) if priority.lstrip("-").isdigit() else 0})
    return ordered


def sort_key(record, name: str):
    value = record.get(name) if isinstance(record, dict) else None
    if value is None and isinstance(record, dict):
        lowered = {str(k).lower(): v for k, v in record.items()}
        value = lowered.get(name.lower())
    if isinstance(value, bool):
        return (1, int(value), "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    if isinstance(value, str):
        return (2, 0, value)
    return (0 if value is None else 3, 0, json.dumps(value, sort_keys=True))


def apply_sort(records: list, specs: list[dict]) -> list:
    records = list(records)
    for spec in sorted(specs, key=lambda s: s["priority"], reverse=True):
        reverse = str(spec["direction"]).lower() == "desc"
        records.sort(key=lambda rec, n=spec["name"]: sort_key(rec, n), reverse=reverse)
    return records


def paging_envelope(records: list, query: dict, take_cap: int) -> dict:
    skip = paging_int(query, "skip", 0)
    take = paging_int(query, "take", DEFAULT_PAGE) or DEFAULT_PAGE
    take = min(take, take_cap)
    specs = sort_specs(query)
    ordered = apply_sort(records, specs) if specs else list(records)
    total = len(ordered)
    page_count = math.ceil(total / take) if take else 0
    return {
        "skip": skip, "take": take, "total": total, "pageCount": page_count,
        "currentPage": skip // take + 1, "batchCount": page_count,
        "prevSkip": max(skip - take, 0), "nextSkip": skip + take,
        "hasPrev": skip > 0, "hasNext": skip + take < total,
        "records": ordered[skip:skip + take], "sortBy": specs,
        "success": True, "severity": "None",
    }


# --------------------------------------------------------------------------- HTTP handler

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SecretServerEmulator/1.0"
    timeout = 120  # idle keep-alive connections give their thread back after this

    # The server object carries these.
    @property
    def state(self) -> EmulatorState:
        return self.server.state

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        if self.server.verbose:
            sys.stderr.write(f"emulator: {self.address_string()} {format % args}\n")

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_HEAD(self):
        self.dispatch("HEAD")

    # ---- request parsing

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def read_chunked_body(self) -> bytes:
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def bearer_value(self) -> str | None:
        scheme, dummy, value = self.headers.get("Authorization", "").strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def split_target(self):
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        segments = [urllib.parse.unquote(s) for s in parts.path.split("/")[1:]]
        if segments and segments[-1] == "" and len(segments) > 1:
            segments.pop()  # tolerate one trailing slash
        return parts.path, parts.query, query, segments

    def strip_base(self, segments: list[str]):
        """Return (base, rest): 'vault', 'ss' (the prefix) or 'root'."""
        lowered = [s.lower() for s in segments]
        for base, prefix in (("vault", VAULT_PATH), ("ss", self.server.prefix)):
            wanted = [p.lower() for p in prefix.split("/")[1:]] if prefix else []
            if wanted and lowered[:len(wanted)] == wanted:
                return base, segments[len(wanted):]
        return "root", segments

    # ---- dispatch

    def dispatch(self, method: str) -> None:
        self.abort_mode = None
        self.download_key = None
        body = self.read_body()
        path, raw_query, query, segments = self.split_target()
        base, rest = self.strip_base(segments)
        if rest[:1] == ["_emulator"]:
            self.send(self.control(method, rest[1:], body))
            return
        category, handler = self.route(method, base, rest)
        entry = {"method": method, "path": path, "query": query, "raw_query": raw_query,
                 "host": self.headers.get("Host", ""), "status": None,
                 "bearer": self.bearer_value() is not None, "grant_type": None,
                 "route": category, "time": time.time()}
        if category in ("token", "platform_token"):
            entry["grant_type"] = form_fields(body).get("grant_type")
            if entry["grant_type"] == "refresh_token":
                category = entry["route"] = "refresh"
        fault = self.state.take_fault(category)
        if fault and fault.kind == "expire_tokens":
            self.state.expire_access_tokens()
        try:
            response = self.faulted_response(fault, category)
            if response is None:
                response = handler(base, query, body)
                response = self.content_fault(fault, category, response)
        except Exception as exc:  # an emulator bug must surface, not look like a network fault
            traceback.print_exc(file=sys.stderr)
            response = json_response(500, {"message": f"emulator error: {exc!r}"})
        entry["status"] = response.status
        self.state.log(entry, category)
        self.send(response, fault)

    def route(self, method: str, base: str, rest: list[str]):
        low = [s.lower() for s in rest]
        serves_ss = base in ("vault", "ss") or not self.server.prefix
        table = []
        if serves_ss:
            table += [
                (["oauth2", "token"], "POST", "token", self.handle_token),
                (["api", "v1", "healthcheck"], "GET", "other", self.handle_health),
            ]
            storage = ["api", "v1", "configuration", "auto-export-storage"]
            if low[:4] == storage:
                return self.storage_route(method, rest[4:])
        if base != "vault":
            table += [
                (["identity", "api", "oauth2", "token", "xpmplatform"], "POST",
                 "platform_token", self.handle_platform_token),
                (["vaultbroker", "api", "vaults"], "GET", "vaults", self.handle_vaults),
            ]
        table.append((["health"], "GET", "other", self.handle_health))
        for pattern, allowed, category, handler in table:
            if low == pattern:
                if method != allowed:
                    return "other", self.method_not_allowed(method)
                return category, handler
        return "other", self.not_found

    def storage_route(self, method: str, rest: list[str]):
        if method != "GET":
            return "other", self.method_not_allowed(method)
        if not rest:
            return "list", lambda base, query, body: self.handle_list(base, query, None)
        if len(rest) == 1 and rest[0].lower() != "item":
            return "list", lambda base, query, body: self.handle_list(base, query, rest[0])
        if len(rest) == 2 and rest[0].lower() == "item":
            return "download", lambda base, query, body: self.handle_download(base, rest[1])
        return "other", self.not_found

    # ---- API handlers

    def not_found(self, base, query, body) -> Response:
        return json_response(404, {"message": "No HTTP resource was found that matches "
                                              f"the request URI '{self.path}'."})

    def method_not_allowed(self, method: str):
        def handler(base, query, body):
            return json_response(405, {"message": "The requested resource does not support "
                                                  f"http method '{method}'."})
        return handler

    def handle_health(self, base, query, body) -> Response:
        return json_response(200, {"healthy": True})

    def handle_token(self, base, query, body) -> Response:
        rejected = self.form_rejection()
        if rejected:
            return rejected
        form = form_fields(body)
        grant = form.get("grant_type")
        if grant == "password":
            return self.password_grant(form)
        if grant == "refresh_token":
            return self.refresh_grant(form)
        return oauth_error("unsupported_grant_type", "grant_type must be password or "
                                                     "refresh_token")

    def form_rejection(self) -> Response | None:
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return oauth_error("unsupported_grant_type",
                               "The token request must be form encoded "
                               "(application/x-www-form-urlencoded).")
        return None

    def password_grant(self, form: dict) -> Response:
        user = USERS.get(form.get("username", "").lower())
        domain = form.get("domain", "")
        if (user is None or user[0] != form.get("password")
                or (domain and domain.upper() != DOMAIN)):
            return oauth_error("invalid_grant", "The user name or password is incorrect.")
        return self.token_pair(form["username"].lower(), user[1])

    def refresh_grant(self, form: dict) -> Response:
        found = self.state.token(form.get("refresh_token"), ("refresh",))
        if found is None:
            return oauth_error("invalid_grant", "The refresh token is invalid or expired.")
        return self.token_pair(found.principal, found.perms)

    def token_pair(self, principal: str, perms: frozenset) -> Response:
        access = self.state.issue("access", principal, perms)
        refresh = self.state.issue("refresh", principal, perms)
        return json_response(200, {"access_token": access, "token_type": "bearer",
                                   "expires_in": int(self.state.token_ttl),
                                   "refresh_token": refresh},
                             [("Cache-Control", "no-store")])

    def handle_platform_token(self, base, query, body) -> Response:
        rejected = self.form_rejection()
        if rejected:
            return rejected
        form = form_fields(body)
        if form.get("grant_type") != "client_credentials":
            return oauth_error("unsupported_grant_type", "grant_type must be client_credentials")
        client = PLATFORM_CLIENTS.get(form.get("client_id", ""))
        if client is None or client[0] != form.get("client_secret"):
            return oauth_error("invalid_client", "The client credentials are invalid.")
        if form.get("scope", "xpmheadless") != "xpmheadless":
            return oauth_error("invalid_scope", "The requested scope is not allowed.")
        token = self.state.issue("platform", form["client_id"], client[1])
        return json_response(200, {"access_token": token, "token_type": "Bearer",
                                   "expires_in": int(self.state.token_ttl)},
                             [("Cache-Control", "no-store")])

    def caller(self, base: str, kinds=None) -> Token | None:
        if kinds is None:
            kinds = ("access", "platform") if base == "vault" else ("access",)
        return self.state.token(self.bearer_value(), kinds)

    def handle_vaults(self, base, query, body) -> Response:
        if self.caller(base, ("platform",)) is None:
            return unauthorized()
        return json_response(200, {"vaults": self.state.vaults()})

    def handle_list(self, base: str, query: dict, configuration: str | None) -> Response:
        token = self.caller(base)
        if token is None:
            return unauthorized()
        if "view" not in token.perms:
            return json_response(403, MSG_ACCESS_DENIED)
        if configuration is not None and not configuration.lstrip("-").isdigit():
            return json_response(400, {"message": "The request is invalid."})
        with self.state.lock:
            exports = list(self.state.exports)
        records = [visible_record(e, token) for e in exports
                   if configuration is None or matches_configuration(e.record, configuration)]
        try:
            envelope = paging_envelope(records, query, self.state.take_cap)
        except BadRequest as exc:
            return json_response(400, {"message": "The request is invalid.",
                                       "messageDetail": str(exc)})
        return json_response(200, envelope)

    def handle_download(self, base: str, key: str) -> Response:
        token = self.caller(base)
        if token is None:
            return unauthorized()
        if "download" not in token.perms:
            return json_response(403, MSG_ACCESS_DENIED)
        export = self.state.find_export(key)
        self.download_key = key
        if export is None:
            return json_response(404, {"message": f"Export storage item {key} was not found."})
        if isinstance(export.record, dict) and export.record.get("canDownload") is False:
            return json_response(403, MSG_ACCESS_DENIED)
        path = self.state.store.path(export.plan)
        return archive_response(Body.of_file(path), export.plan)

    # ---- faults

    def faulted_response(self, fault: Fault | None, category: str) -> Response | None:
        """Responses that replace whatever the route would have answered."""
        if fault is None:
            return None
        if fault.kind == "status":
            return status_fault_response(fault.params)
        if fault.kind == "html200":
            return Response(200, Body([SIGN_IN_PAGE]), "text/html; charset=utf-8")
        if fault.kind == "invalid_json":
            return Response(200, Body([GARBAGE_JSON]))
        if fault.kind == "corrupt":
            ctype = "application/octet-stream" if category == "download" else \
                "application/json; charset=utf-8"
            return Response(200, Body([CORRUPT_HEAD + b"\x00\x01garbage\xff" * 64]), ctype)
        return None

    def content_fault(self, fault: Fault | None, category: str, response: Response) -> Response:
        """Faults that alter a successful answer of the route itself."""
        if fault is None or response.status != 200:
            return response
        if fault.kind in ("no_records", "bad_records"):
            envelope = json.loads(b"".join(response.body.segments))
            if fault.kind == "no_records":
                envelope.pop("records", None)
            else:
                envelope["records"] = bad_records() + envelope.get("records", [])[:1]
            return json_response(200, envelope)
        if category == "download" and fault.kind in ("noxml", "flip_byte"):
            plan = self.state.find_export(self.download_key).plan
            if fault.kind == "noxml":
                return archive_response(Body.of_file(self.state.store.path(plan, "noxml")), plan)
            return archive_response(flipped_body(self.state.store.path(plan)), plan)
        return response

    # ---- control API

    def control(self, method: str, rest: list[str], body: bytes) -> Response:
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError:
            return json_response(400, {"error": "control requests take a JSON body"})
        if not isinstance(payload, dict):
            return json_response(400, {"error": "control requests take a JSON object"})
        name = rest[0] if rest else ""
        try:
            if name == "archive" and method == "GET" and len(rest) == 2:
                path = self.state.archive_path(rest[1])
                if path is None:
                    return json_response(404, {"error": f"no archive for id {rest[1]!r}"})
                return Response(200, Body.of_file(path), "application/octet-stream")
            operation = CONTROL_OPERATIONS.get((method, name))
            if operation is None or len(rest) != 1:
                return json_response(404, {"error": "unknown control endpoint"})
            return json_response(200, operation(self.state, payload))
        except (TypeError, ValueError, KeyError) as exc:  # includes ControlError
            return json_response(400, {"error": str(exc)})

    # ---- sending

    def send(self, response: Response, fault: Fault | None = None) -> None:
        kind = fault.kind if fault else None
        params = fault.params if fault else {}
        if kind == "slow":
            self.state.stopping.wait(float(params.get("delay", 1.0)))
        length = response.body.length
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        if kind == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif response.status not in (204, 304):
            self.send_header("Content-Length", str(length))
        if self.command == "HEAD":
            self.end_headers()
            return
        self.end_headers()
        if kind == "chunked" and params.get("bytes") is not None:
            # A chunked body cut short: no Content-Length to check it against, so only the
            # missing last chunk (and the archive check) can tell the client it is partial.
            self.send_chunked(response.body, min(int(params["bytes"]), length), last=False)
            self.abort_mode = "close"
            self.close_connection = True
        elif kind == "chunked":
            self.send_chunked(response.body)
        elif kind in ("drop_after", "truncate"):
            cut = int(params.get("bytes", length // 2))
            self.send_range(response.body, 0, min(cut, length))
            self.abort_mode = "reset" if kind == "drop_after" else "close"
            self.close_connection = True
        elif kind == "stall":
            first = min(int(params.get("bytes", 0)), length)
            self.send_range(response.body, 0, first)
            self.state.stopping.wait(float(params.get("delay", 5.0)))
            self.send_range(response.body, first, length)
        else:
            self.send_range(response.body, 0, length)

    def send_range(self, body: Body, start: int, end: int) -> None:
        for piece in body.pieces(start, end):
            if isinstance(piece, bytes):
                self.connection.sendall(piece)
                continue
            path, offset, count = piece
            with open(path, "rb") as handle:
                self.connection.sendfile(handle, offset, count)

    def send_chunked(self, body: Body, end: int | None = None, last: bool = True) -> None:
        for piece in body.pieces(0, body.length if end is None else end):
            for data in read_piece(piece):
                self.connection.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
        if last:
            self.connection.sendall(b"0\r\n\r\n")

    def finish(self):
        super().finish()
        if self.__dict__.get("abort_mode") == "reset":
            # Linger 0 turns close() into a TCP reset: the peer sees a dropped connection.
            # A reset discards unsent data, so first let the bytes already written leave.
            wait_for_send_queue(self.connection, 2.0)
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass
        elif self.__dict__.get("abort_mode") == "close" and isinstance(self.connection,
                                                                       ssl.SSLSocket):
            try:
                self.connection.settimeout(0.5)
                self.connection.unwrap()
            except (OSError, ValueError):
                pass


def wait_for_send_queue(sock, limit: float) -> None:
    """Wait until the kernel has sent (and the peer acknowledged) what we wrote."""
    try:
        import fcntl
        import termios
    except ImportError:  # not on Linux: a reset may then cut off the last bytes
        return
    deadline = time.monotonic() + limit
    buffer = bytearray(4)
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buffer)
        except (OSError, ValueError):
            return
        if struct.unpack("i", buffer)[0] == 0:
            return
        time.sleep(0.01)


def read_piece(piece, size: int = 1 << 20):
    if isinstance(piece, bytes):
        yield piece
        return
    path, offset, count = piece
    with open(path, "rb") as handle:
        handle.seek(offset)
        while count > 0:
            data = handle.read(min(size, count))
            if not data:
                return
            count -= len(data)
            yield data


def form_fields(body: bytes) -> dict:
    text = body.decode("utf-8", "replace")
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))


def oauth_error(code: str, description: str) -> Response:
    return json_response(400, {"error": code, "error_description": description},
                         [("Cache-Control", "no-store")])


def unauthorized() -> Response:
    return json_response(401, MSG_AUTH_FAILED, [("WWW-Authenticate", "Bearer")])


def status_fault_response(params: dict) -> Response:
    code = int(params["code"])
    headers = []
    if params.get("retry_after") is not None:
        headers.append(("Retry-After", str(params["retry_after"])))
    if code in (204, 304):
        return Response(code, Body([]), headers=headers)
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Emulated failure"
    payload = params.get("body", {"message": phrase})
    return json_response(code, payload, headers)


def archive_response(body: Body, plan: ArchivePlan) -> Response:
    stem = plan.entry[:-4] if plan.entry.endswith(".xml") else plan.entry
    quoted = urllib.parse.quote(f"{stem}.zip", safe="")
    return Response(200, body, "application/octet-stream",
                    [("Content-Disposition", f"attachment; filename*=UTF-8''{quoted}")])


def visible_record(export: Export, token: Token):
    """Generated records say what this caller may download; raw records are returned as set."""
    record = export.record
    if export.generated and "download" not in token.perms and record.get("canDownload"):
        return {**record, "canDownload": False}
    return record


def matches_configuration(record, configuration: str) -> bool:
    if not isinstance(record, dict):
        return False
    return str(record.get("autoExportConfigurationId")) == configuration


CONTROL_OPERATIONS = {
    ("GET", "state"): lambda state, body: state.snapshot(),
    ("POST", "reset"): lambda state, body: state.reset(),
    ("POST", "exports"): EmulatorState.set_exports,
    ("GET", "records"): lambda state, body: state.records(),
    ("POST", "records"): EmulatorState.set_records,
    ("POST", "faults"): EmulatorState.set_faults,
    ("GET", "vaults"): lambda state, body: {"vaults": state.vaults()},
    ("POST", "vaults"): EmulatorState.set_vaults,
    ("POST", "config"): EmulatorState.configure,
}


# --------------------------------------------------------------------------- server, TLS

def ensure_tls_files(state_dir: str, host: str) -> tuple[str, str, str]:
    """Create (or reuse) a CA and a server certificate for loopback names in the state dir."""
    ca_path = os.path.join(state_dir, "ca.pem")
    cert_path = os.path.join(state_dir, "server.pem")
    key_path = os.path.join(state_dir, "server-key.pem")
    names = tls_names(host)
    if all(os.path.exists(p) for p in (ca_path, cert_path, key_path)) and \
            tls_covers(cert_path, names):
        return ca_path, cert_path, key_path
    ca_pem, cert_pem, key_pem = make_tls_material(names)
    for path, data in ((ca_path, ca_pem), (cert_path, cert_pem), (key_path, key_pem)):
        with open(path, "wb") as handle:
            handle.write(data)
    os.chmod(key_path, 0o600)
    return ca_path, cert_path, key_path


def tls_names(host: str) -> set[str]:
    names = {"localhost", "127.0.0.1", "::1"}
    if host and host not in ("0.0.0.0", "::"):
        names.add(host)
    return names


def tls_covers(cert_path: str, names: set[str]) -> bool:
    from cryptography import x509
    try:
        with open(cert_path, "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    have |= set(san.get_values_for_type(x509.DNSName))
    expiry = cert.not_valid_after_utc
    return names <= have and expiry > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)


def make_tls_material(names: set[str]) -> tuple[bytes, bytes, bytes]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Secret Server Emulator CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256()))
    alt = []
    for name in sorted(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ca_cert.public_bytes(pem), cert.public_bytes(pem), key_pem


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, state: EmulatorState, prefix: str, ssl_context, verbose: bool):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state, self.prefix, self.verbose = state, prefix, verbose
        self.ssl_context = ssl_context
        self.open_sockets: set = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, so a silent client
        # cannot hold up the accept loop.
        conn = request
        try:
            # Headers and body leave in separate writes; with Nagle's algorithm the body then
            # waits for the client's delayed ACK, about 40 ms a response.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                request.settimeout(10)
                conn = self.ssl_context.wrap_socket(request, server_side=True)
            with self.sockets_lock:
                self.open_sockets.add(conn)
            super().finish_request(conn, client_address)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self.sockets_lock:
                self.open_sockets.discard(conn)
            if conn is not request:
                self.shutdown_request(conn)

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def normalise_prefix(prefix: str | None) -> str:
    prefix = (prefix or "").strip().strip("/")
    return f"/{prefix}" if prefix else ""


# --------------------------------------------------------------------------- Python API

class ControlClient:
    """The control API over HTTP, for an emulator running in another process."""

    def __init__(self, url: str, ca_file: str | None = None, timeout: float = 120):
        self.url = url.rstrip("/")
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        # No proxies: control traffic must stay on the loopback emulator.
        handlers = [urllib.request.ProxyHandler({})]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)
        self.timeout = timeout

    def call(self, method: str, name: str, payload: dict | None = None) -> dict:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"{self.url}/_emulator/{name}", data=data,
                                         method=method,
                                         headers={"Content-Type": "application/json"})
        with self._opener.open(request, timeout=self.timeout) as answer:
            body = answer.read()
        return json.loads(body) if name.split("/")[0] != "archive" else body

    def state(self) -> dict:
        return self.call("GET", "state")

    def reset(self) -> dict:
        return self.call("POST", "reset", {})

    def set_exports(self, **spec) -> dict:
        return self.call("POST", "exports", spec)

    def set_records(self, records: list, archive: str = "valid", **spec) -> dict:
        return self.call("POST", "records", {"records": records, "archive": archive, **spec})

    def records(self) -> list:
        return self.call("GET", "records")["records"]

    def archive_bytes(self, export_id) -> bytes:
        return self.call("GET", "archive/" + urllib.parse.quote(str(export_id), safe=""))

    def add_faults(self, *faults: dict) -> dict:
        return self.call("POST", "faults", {"faults": list(faults)})

    def add_fault(self, on: str, kind: str, **params) -> dict:
        return self.add_faults({"on": on, "kind": kind, **params})

    def set_vaults(self, vaults: list | None) -> dict:
        return self.call("POST", "vaults", {"vaults": vaults})

    def vaults(self) -> list:
        return self.call("GET", "vaults")["vaults"]

    def configure(self, **settings) -> dict:
        return self.call("POST", "config", settings)

    def markers(self) -> list:
        return self.state()["markers"]


class Emulator:
    """In-process emulator: ``with Emulator() as emu: requests.get(emu.url + ...)``.

    ``url`` is the Secret Server base URL (with ``prefix``), ``root_url`` the server root,
    ``vault_url`` the Platform vault's Secret Server URL and ``ca_file`` the CA for ``tls``.
    The helper methods take and return what the matching control endpoint does.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: bool = False, **opts):
        self.host, self.port, self.tls = host, port, tls
        self.prefix = normalise_prefix(opts.pop("prefix", ""))
        self.verbose = bool(opts.pop("verbose", False))
        self._given_state_dir = opts.pop("state_dir", None)
        self.opts = opts
        self.state_dir = None
        self.ca_file = None
        self._server = None
        self._thread = None
        self._state = None

    # ---- lifecycle

    def start(self) -> "Emulator":
        if self._given_state_dir:
            os.makedirs(self._given_state_dir, exist_ok=True)
            self.state_dir = os.path.abspath(self._given_state_dir)
        else:
            self.state_dir = tempfile.mkdtemp(prefix="ss-emulator-")
        try:
            self._state = EmulatorState(self.opts, self.state_dir)
            self._server = EmulatorHTTPServer((self.host, self.port), self._state, self.prefix,
                                              self._tls_context(), self.verbose)
            self.port = self._server.server_address[1]
            self._state.root_url = self.root_url
            self._state.set_exports({})
        except BaseException:
            self._cleanup()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,),
                                        name="ss-emulator", daemon=True)
        self._thread.start()
        return self

    def _tls_context(self):
        if not self.tls:
            return None
        self.ca_file, cert, key = ensure_tls_files(self.state_dir, self.host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context

    def stop(self) -> None:
        if self._state is not None:
            self._state.stopping.set()
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
        if self._server is not None:
            self._server.close_connections()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._server is not None:
            self._server.server_close()
            self._server = None
        if self.state_dir and not self._given_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- addresses

    @property
    def root_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{url_host(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return self.root_url + self.prefix

    @property
    def vault_url(self) -> str:
        return self.root_url + VAULT_PATH

    # ---- control helpers (same shapes as the HTTP control API)

    def state(self) -> dict:
        return self._state.snapshot()

    def reset(self) -> dict:
        return self._state.reset()

    def set_exports(self, **spec) -> dict:
        return self._state.set_exports(spec)

    def set_records(self, records: list, archive: str = "valid", **spec) -> dict:
        return self._state.set_records({"records": records, "archive": archive, **spec})

    def records(self) -> list:
        return self._state.records()["records"]

    def archive_path(self, export_id) -> str | None:
        return self._state.archive_path(str(export_id))

    def archive_bytes(self, export_id) -> bytes:
        path = self.archive_path(export_id)
        if path is None:
            raise KeyError(export_id)
        with open(path, "rb") as handle:
            return handle.read()

    def add_faults(self, *faults: dict) -> dict:
        return self._state.set_faults({"faults": list(faults)})

    def add_fault(self, on: str, kind: str, **params) -> dict:
        return self.add_faults({"on": on, "kind": kind, **params})

    def set_vaults(self, vaults: list | None) -> dict:
        return self._state.set_vaults({"vaults": vaults})

    def vaults(self) -> list:
        return self._state.vaults()

    def configure(self, **settings) -> dict:
        return self._state.configure(settings)

    def markers(self) -> list:
        return self._state.markers()


class EmulatorProcess:
    """The emulator as a child process (``python server.py``) with the control API client."""

    def __init__(self, *args: str, startup_timeout: float = 120, **options):
        self.args = list(args) + cli_arguments(options)
        self.startup_timeout = startup_timeout
        self.proc = None
        self.url = None
        self.control = None

    def start(self) -> "EmulatorProcess":
        command = [sys.executable, os.path.abspath(__file__), *self.args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self._first_line()
        if not line.startswith("EMULATOR_URL="):
            self.stop()
            raise RuntimeError(f"emulator did not start (said {line!r})")
        self.url = line.split("=", 1)[1].strip()
        ca_file = None
        if "--tls" in self.args and "--state-dir" in self.args:
            ca_file = os.path.join(self.args[self.args.index("--state-dir") + 1], "ca.pem")
        self.control = ControlClient(self.url, ca_file=ca_file)
        return self

    def _first_line(self) -> str:
        result = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(self.startup_timeout)
        return result[0] if result else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> "EmulatorProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cli_arguments(options: dict) -> list[str]:
    """Turn keyword options (state_dir='x', tls=True) into command-line flags."""
    args = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (None, False):
            args += [flag, str(value)]
    return args


# --------------------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Secret Server Cloud export API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--prefix", default="", help="sub-path of the Secret Server API")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS; writes ca.pem")
    parser.add_argument("--state-dir", help="archives and certificates (default: temp dir)")
    parser.add_argument("--exports", type=int, default=12)
    parser.add_argument("--token-ttl", type=float, default=1200)
    parser.add_argument("--take-cap", type=int, default=500)
    parser.add_argument("--archive-size", type=int, default=None, help="pad archives to ~N bytes")
    parser.add_argument("--secrets", type=int, default=5)
    parser.add_argument("--folders", type=int, default=3)
    parser.add_argument("--password", default=DEFAULT_EXPORT_PASSWORD, help="export password")
    parser.add_argument("--url-file", help="also write the URL to this file")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    return parser.parse_args(argv)


def write_url_file(path: str, url: str) -> None:
    temp = f"{path}.tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(url + "\n")
    os.replace(temp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    emulator = Emulator(args.host, args.port, args.tls, prefix=args.prefix,
                        state_dir=args.state_dir, exports=args.exports,
                        token_ttl=args.token_ttl, take_cap=args.take_cap,
                        archive_size=args.archive_size, secrets=args.secrets,
                        folders=args.folders, password=args.password, verbose=args.verbose)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    emulator.start()
    try:
        if args.url_file:
            write_url_file(args.url_file, emulator.url)
        print(f"EMULATOR_URL={emulator.url}", flush=True)
        while not stop.wait(1):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
