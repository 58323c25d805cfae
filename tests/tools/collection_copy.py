"""Lay out a copy of the collection as DEST/ansible_collections/secretserver/backup.

Usage: python collection_copy.py DEST

ansible-test only runs inside an ansible_collections/<namespace>/<name> directory and resolves
symlinks when it looks at its working directory, so it gets a real copy. The copy is rebuilt
from scratch each time so that files deleted from the checkout do not linger in it.
It gets an empty git repository of its own: otherwise ansible-test would list files through
an enclosing checkout, whose .gitignore hides the copy (under .tmp) and so every file in it.
Prints the path of the copied collection root.
"""

import fnmatch
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMESPACE, NAME = "secretserver", "backup"

# Local state and caches that are not part of the collection's source.
EXCLUDE_TOP = {".venv", ".tmp", ".git", "tests/output"}
EXCLUDE_ANYWHERE = ("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", ".mypy_cache",
                    ".ruff_cache", "*.tar.gz")


def _ignore(directory, names):
    rel_dir = os.path.relpath(directory, ROOT)
    skipped = set()
    for name in names:
        rel = name if rel_dir == "." else os.path.join(rel_dir, name)
        if rel in EXCLUDE_TOP or any(fnmatch.fnmatch(name, pat) for pat in EXCLUDE_ANYWHERE):
            skipped.add(name)
    return skipped


def make_copy(dest):
    target = os.path.join(os.path.abspath(dest), "ansible_collections", NAMESPACE, NAME)
    if os.path.lexists(target):
        shutil.rmtree(target)
    shutil.copytree(ROOT, target, symlinks=True, ignore=_ignore)
    if shutil.which("git"):
        # ansible-test lists untracked files that .gitignore does not hide; nothing to commit.
        subprocess.check_call(["git", "init", "-q", target])
    return target


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(make_copy(sys.argv[1]))


if __name__ == "__main__":
    main()
