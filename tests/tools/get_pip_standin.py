"""Offline stand-in for the pip bootstrap script that ansible-test downloads.

ansible-test bootstraps pip into each fresh virtual environment by running a downloaded
``get-pip`` script, which needs a host this machine cannot reach. It first looks for the script
in its cache (``~/.ansible/test/cache/get_pip_<version>.py``); ``place_get_pip.py`` copies this
file there. It is run (through ansible-test's ``quiet_pip.py``) with the venv's interpreter and
the same arguments as the real script, for example::

    --disable-pip-version-check pip==24.2 --no-setuptools --no-wheel

so it gets pip from the interpreter's own bundled copy (``ensurepip``) and then lets that pip
install the requested version from the configured package index.
"""

import subprocess
import sys

# Flags of the real bootstrap script that pip itself does not understand.
_OWN_FLAGS = ("--no-setuptools", "--no-wheel")


def _run(*args):
    # Child processes keep this one's sys.path and loaded modules out of pip's way.
    subprocess.check_call([sys.executable] + list(args))


def _has(name):
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec(%r) is None)" % name
    return subprocess.call([sys.executable, "-c", code]) == 0


def main(argv):
    pip_args = [arg for arg in argv if arg not in _OWN_FLAGS]
    had_setuptools = _has("setuptools")

    _run("-m", "ensurepip", "--upgrade")

    # Older bundled copies of ensurepip also install setuptools; honour --no-setuptools.
    if "--no-setuptools" in argv and not had_setuptools and _has("setuptools"):
        _run("-m", "pip", "uninstall", "-q", "-y", "setuptools")

    if pip_args:
        _run("-m", "pip", "install", "-q", *pip_args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
