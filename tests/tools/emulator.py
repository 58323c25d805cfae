"""Start, stop and query the Secret Server emulator (tests/emulator/server.py) from shell scripts.

  python emulator.py start --dir DIR      start it on 127.0.0.1, a free port; print its URL
  python emulator.py stop --dir DIR       stop the one started with that DIR (by its pid file)
  python emulator.py downloads --url URL  print how many archive downloads it has served
  python emulator.py match --url URL FILE...
                                          print, per FILE, its SHA-256 and whether those
                                          bytes are an archive the emulator serves

DIR keeps url, pid and log files, so the caller needs no process bookkeeping of its own.
Only loopback URLs are accepted: these helpers never talk to anything else.
"""

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import quote, urlsplit
from urllib.request import ProxyHandler, build_opener

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SERVER = os.path.join(ROOT, "tests", "emulator", "server.py")
# A proxy from the environment must never see loopback traffic.
OPENER = build_opener(ProxyHandler({}))


def _loopback(url):
    host = urlsplit(url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise SystemExit("emulator.py: refusing non-loopback URL %s" % url)
    return url.rstrip("/")


def _get(url, path):
    with OPENER.open(_loopback(url) + path, timeout=30) as response:
        return response.read()


def start(workdir, timeout):
    os.makedirs(workdir, exist_ok=True)
    url_file = os.path.join(workdir, "url")
    if os.path.exists(url_file):
        os.remove(url_file)
    log = open(os.path.join(workdir, "emulator.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--port", "0", "--url-file", url_file],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)  # its own group, so stop() ends it and any children
    with open(os.path.join(workdir, "pid"), "w") as handle:
        handle.write("%d\n" % proc.pid)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("emulator exited early (%s); see %s" % (proc.returncode, log.name))
        if os.path.exists(url_file):
            with open(url_file) as handle:
                url = handle.read().strip()
            if url:
                # The file may hold the bare URL or the same line the server prints.
                if url.startswith("EMULATOR_URL="):
                    url = url[len("EMULATOR_URL="):]
                print(_loopback(url))
                return
        time.sleep(0.1)
    stop(workdir)
    raise SystemExit("emulator gave no URL within %ss; see %s" % (timeout, log.name))


def stop(workdir):
    pid_file = os.path.join(workdir, "pid")
    if not os.path.exists(pid_file):
        return
    with open(pid_file) as handle:
        pid = int(handle.read().strip())
    os.remove(pid_file)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _attempt in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _state(url):
    return json.loads(_get(url, "/_emulator/state").decode("utf-8"))


def downloads(state):
    """Archive downloads the emulator has served (control calls are not counted)."""
    try:
        return int(state["counts"]["download"])
    except (KeyError, TypeError, ValueError):
        raise SystemExit("emulator state has no counts.download: %s" % json.dumps(state)[:400])


def match(url, files):
    served = {}
    records = json.loads(_get(url, "/_emulator/records").decode("utf-8"))["records"]
    for record in records:
        export_id = record.get("id")
        try:
            data = _get(url, "/_emulator/archive/%s" % quote(str(export_id), safe=""))
        except OSError:
            continue  # a record the emulator keeps no archive for
        served[hashlib.sha256(data).hexdigest()] = export_id
    ok = True
    for path in files:
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        if digest in served:
            print("%s  %s  matches emulator archive %s" % (digest, path, served[digest]))
        else:
            ok = False
            print("%s  %s  MATCHES NO ARCHIVE the emulator serves" % (digest, path))
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start")
    p_start.add_argument("--dir", required=True)
    p_start.add_argument("--timeout", type=float, default=30)
    sub.add_parser("stop").add_argument("--dir", required=True)
    sub.add_parser("downloads").add_argument("--url", required=True)
    p_match = sub.add_parser("match")
    p_match.add_argument("--url", required=True)
    p_match.add_argument("files", nargs="+")
    args = parser.parse_args()
    if args.command == "start":
        start(args.dir, args.timeout)
    elif args.command == "stop":
        stop(args.dir)
    elif args.command == "downloads":
        print(downloads(_state(args.url)))
    else:
        return match(args.url, args.files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
