"""Find working interpreters for the given Python versions, by full path.

Usage: python find_pythons.py [--link-dir DIR] [--quiet] X.Y [X.Y ...]

Prints "X.Y PATH" for each version found. pyenv shims cannot be trusted (they fail for
versions that are not selected), so every candidate is run once before it is accepted.
With --link-dir, DIR gets a pythonX.Y symlink per version found, for putting on PATH
ahead of the shims (ansible-test looks interpreters up on PATH by that name).
Versions not found are reported on stderr and skipped; a machine without pyenv is fine.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys


def _pyenv_root():
    root = os.environ.get("PYENV_ROOT")
    if root:
        return root
    exe = shutil.which("pyenv")
    if exe:
        try:
            return subprocess.check_output([exe, "root"], universal_newlines=True).strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    default = os.path.expanduser("~/.pyenv")
    return default if os.path.isdir(default) else None


def _candidates(version):
    root = _pyenv_root()
    if root:
        # Newest patch release first.
        found = glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python" + version))
        yield from sorted(found, key=_patch_key, reverse=True)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory, "python" + version)
        if os.access(path, os.X_OK) and "shims" not in directory:
            yield path
    for directory in ("/usr/local/bin", "/usr/bin"):
        yield os.path.join(directory, "python" + version)


def _patch_key(path):
    release = path.split(os.sep)[-3]
    return [int(part) if part.isdigit() else -1 for part in release.split(".")]


def _works(path, version):
    if not os.access(path, os.X_OK):
        return False
    code = "import sys, venv; print('%d.%d' % sys.version_info[:2])"
    try:
        out = subprocess.check_output([path, "-c", code], stderr=subprocess.DEVNULL,
                                      universal_newlines=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip() == version


def find(version):
    for path in _candidates(version):
        if _works(path, version):
            return os.path.realpath(path)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--link-dir")
    parser.add_argument("--quiet", action="store_true", help="no stderr note for misses")
    parser.add_argument("versions", nargs="+")
    args = parser.parse_args()
    if args.link_dir:
        os.makedirs(args.link_dir, exist_ok=True)
    found_any = False
    for version in args.versions:
        path = find(version)
        if not path:
            if not args.quiet:
                print("SKIP: no working python%s on this machine" % version, file=sys.stderr)
            continue
        found_any = True
        print("%s %s" % (version, path))
        if args.link_dir:
            link = os.path.join(args.link_dir, "python" + version)
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(path, link)
    return 0 if found_any else 1


if __name__ == "__main__":
    sys.exit(main())
