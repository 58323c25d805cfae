"""Put the offline get-pip stand-in where ansible-test looks for a cached bootstrap script.

Usage: python place_get_pip.py [--python PYTHON]...

PYTHON is an interpreter that has ansible-core installed (default: this one). The pip version
that ansible-test bootstraps is read from its source, so each ansible-core release gets the
file name it expects. A cached script that is not ours (a real download) is left alone.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "get_pip_standin.py")
MARKER = "Offline stand-in for the pip bootstrap script"
CACHE_DIR = os.path.expanduser("~/.ansible/test/cache")

# Asks the interpreter where its ansible_test package is without importing it.
_LOCATE = (
    "import importlib.util, os; "
    "s = importlib.util.find_spec('ansible_test'); "
    "print(os.path.dirname(s.origin) if s else '')"
)


def pip_versions(python):
    """Return the pip versions that this interpreter's ansible-test bootstraps."""
    root = subprocess.check_output([python, "-c", _LOCATE], universal_newlines=True).strip()
    if not root:
        raise SystemExit("place_get_pip: no ansible-test for %s" % python)
    with open(os.path.join(root, "_internal", "python_requirements.py")) as handle:
        source = handle.read()
    # Matches both the default (pip='24.2') and per-Python overrides ('pip': '23.1.2').
    found = set(re.findall(r"""\bpip['"]?\s*[=:]\s*['"](\d+(?:\.\d+)*)['"]""", source))
    if not found:
        raise SystemExit("place_get_pip: cannot read the pip version from %s" % root)
    return sorted(found)


def place(version):
    target = os.path.join(CACHE_DIR, "get_pip_%s.py" % version.replace(".", "_"))
    if os.path.exists(target):
        with open(target) as handle:
            if MARKER not in handle.read():
                print("place_get_pip: keeping existing %s" % target)
                return
    os.makedirs(CACHE_DIR, exist_ok=True)
    shutil.copyfile(STANDIN, target)
    print("place_get_pip: %s" % target)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", default=[])
    args = parser.parse_args()
    for python in args.python or [sys.executable]:
        for version in pip_versions(python):
            place(version)


if __name__ == "__main__":
    main()
