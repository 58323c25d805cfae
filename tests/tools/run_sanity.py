"""Run ``ansible-test sanity`` offline on a copy of the collection, on every Python we have.

Usage: python run_sanity.py --venv-bin DIR [--work DIR] [--log FILE] [-- ANSIBLE_TEST_ARGS...]

Steps, each named in the output:
  ignores  refuse entries in tests/sanity/ignore-*.txt (none are allowed for our own code)
  copy     lay the collection out under WORK/ansible_collections/secretserver/backup
  pythons  find real interpreters for 3.8..3.13 and link them into WORK/../pybin, because
           ansible-test looks for pythonX.Y on PATH and pyenv shims fail for unselected versions
  get-pip  place the offline pip bootstrap stand-in in ansible-test's cache
  sanity   ansible-test sanity --venv (its tool venvs live in ~/.ansible/test/venv)
At the end a table gives each sanity test's time, so slow tests show up in the budget.
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import collection_copy  # noqa: E402  (needs HERE on sys.path)

VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
STARTED = re.compile(r'Running sanity test "([^"]+)"(?: on Python ([0-9.]+))?')


def step(name):
    print("==> sanity/%s" % name, flush=True)


def ignore_entries():
    """Entries in tests/sanity/ignore-*.txt: the project allows none for its own code."""
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "sanity", "ignore-*.txt"))):
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append("%s:%d: %s" % (os.path.relpath(path, ROOT), number, line.strip()))
    return found


def find_pythons(link_dir):
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "find_pythons.py"), "--link-dir", link_dir]
        + list(VERSIONS), stdout=subprocess.PIPE, universal_newlines=True, check=False).stdout
    found = [line.split()[0] for line in out.splitlines() if line.strip()]
    for version in VERSIONS:
        print("    python%-5s %s" % (version, "found" if version in found else "MISSING (skipped)"))
    return found


def run_timed(cmd, cwd, env, log_path):
    """Stream the command's output, keep a log, and return (rc, [(test, seconds)])."""
    timings, current, began = [], None, time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, universal_newlines=True,
                                stdin=subprocess.DEVNULL)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            match = STARTED.search(line)
            if match:
                now = time.time()
                if current:
                    timings.append((current, now - began))
                current = match.group(1) + (" @" + match.group(2) if match.group(2) else "")
                began = now
        rc = proc.wait()
    if current:
        timings.append((current, time.time() - began))
    return rc, timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv-bin", required=True, help="bin dir with ansible-test")
    parser.add_argument("--work", default=os.path.join(ROOT, ".tmp", "sanity"))
    parser.add_argument("--log", default=os.path.join(ROOT, ".tmp", "sanity.log"))
    parser.add_argument("extra", nargs="*", help="extra ansible-test sanity arguments")
    args = parser.parse_args()
    venv_bin = os.path.abspath(args.venv_bin)

    step("ignores")
    entries = ignore_entries()
    if entries:
        print("\n".join("    " + entry for entry in entries))
        raise SystemExit("sanity: FAILED, tests/sanity ignore files must stay empty: fix the "
                         "findings instead")

    step("copy")
    content_root = collection_copy.make_copy(args.work)
    print("    " + content_root)

    step("pythons")
    link_dir = os.path.join(os.path.dirname(os.path.abspath(args.work)), "pybin")
    if not find_pythons(link_dir):
        raise SystemExit("sanity: no usable Python 3.8..3.13 found")

    step("get-pip")
    subprocess.check_call([sys.executable, os.path.join(HERE, "place_get_pip.py"),
                           "--python", os.path.join(venv_bin, "python")])

    step("sanity")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([link_dir, venv_bin, env.get("PATH", "")])
    # ansible-test sets up its own collection search path; an outer one would only confuse it.
    for name in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_COLLECTIONS_PATHS", "PYTHONPATH"):
        env.pop(name, None)
    cmd = [os.path.join(venv_bin, "ansible-test"), "sanity", "--venv", "--color", "no"]
    cmd += args.extra
    print("    " + " ".join(cmd), flush=True)
    began = time.time()
    rc, timings = run_timed(cmd, content_root, env, args.log)

    print("\nsanity test times (seconds, including tool venv setup on a first run):")
    for name, seconds in timings:
        print("    %-36s %6.1f" % (name, seconds))
    print("    %-36s %6.1f" % ("total", time.time() - began))
    print("sanity log: %s" % args.log)
    if rc:
        print("sanity: FAILED (ansible-test exit %d)" % rc, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
