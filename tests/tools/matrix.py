"""Run tests/integration against older and newer controllers and managed-host Pythons.

Usage: python matrix.py --harness-python PY [--strict] [--only CELL] [-- PYTEST_ARGS...]

Each cell pairs a controller (ansible-core in its own venv) with a managed-host interpreter
(a venv with the collection's runtime requirements, requirements.txt). The pytest harness
itself always runs from the main dev venv (PY); it reaches the cell through environment
variables that tests/integration honours (see tests/tools/README.md):

  SSB_ANSIBLE_BIN_DIR   bin dir of the controller under test (ansible-playbook, ansible, ...)
  SSB_MANAGED_PYTHON    interpreter for the modules (ansible_python_interpreter)
  SSB_MATRIX_CELL       name of the cell, for messages

A cell whose Python is missing on this machine is skipped with a note, or fails with --strict.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TMP = os.path.join(ROOT, ".tmp")
sys.path.insert(0, HERE)

import find_pythons  # noqa: E402  (needs HERE on sys.path)

# name, controller venv, controller Python, ansible-core requirement, managed-host Python.
# 2.16 is the oldest core that meta/runtime.yml admits and the newest one that still manages
# Python 3.8 hosts; the newest core needs a 3.12+ controller.
CELLS = (
    ("core2.16-py3.8", "venv-2.16", "3.11", "ansible-core>=2.16,<2.17", "3.8"),
    ("newest-py3.13", "venv-newest", "3.12", "ansible-core", "3.13"),
)
RUNTIME_REQUIREMENTS = os.path.join(ROOT, "requirements.txt")


def note(msg):
    print("==> matrix: " + msg, flush=True)


def ensure_venv(path, python, requirements):
    """Create or refresh a venv; a stamp of the inputs keeps a second run fast."""
    wanted = hashlib.sha256(repr((python, requirements)).encode()).hexdigest()
    for req in requirements:
        if os.path.isfile(req):
            with open(req, "rb") as handle:
                wanted = hashlib.sha256(wanted.encode() + handle.read()).hexdigest()
    stamp = os.path.join(path, ".ssb-stamp")
    if os.path.exists(stamp):
        with open(stamp) as handle:
            if handle.read().strip() == wanted:
                return
    note("building %s (%s)" % (os.path.relpath(path, ROOT), python))
    subprocess.check_call([python, "-m", "venv", "--clear", path])
    pip = [os.path.join(path, "bin", "python"), "-m", "pip", "install", "-q"]
    for req in requirements:
        subprocess.check_call(pip + (["-r", req] if os.path.isfile(req) else [req]))
    with open(stamp, "w") as handle:
        handle.write(wanted + "\n")


def expose_controller_ansible(name, controller_python, managed_venv):
    """Let the managed-host venv import this cell's ``ansible`` package.

    Ansible ships module_utils inside each module's payload, but tests/support.py also runs
    modules directly (python -m ...) on the managed Python, which needs ``ansible`` there.
    ansible-core 2.16 does not install on Python 3.8, so the venv gets a .pth file that points
    at a directory holding only a link to the controller's ``ansible`` package: the same
    module_utils the payload would carry, and none of the controller's other packages.
    """
    package = version_of(controller_python,
                         "import ansible, os; print(os.path.dirname(ansible.__file__))")
    lib_dir = os.path.join(TMP, "matrix-ansible-lib", name)
    os.makedirs(lib_dir, exist_ok=True)
    link = os.path.join(lib_dir, "ansible")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(package, link)
    managed_python = os.path.join(managed_venv, "bin", "python")
    site = version_of(managed_python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    with open(os.path.join(site, "_ssb_controller_ansible.pth"), "w") as handle:
        handle.write(lib_dir + "\n")


def version_of(python, code):
    return subprocess.check_output([python, "-c", code], universal_newlines=True).strip()


def run_cell(cell, harness, pytest_args, strict):
    name, venv_dir, controller_py, core_req, managed_py = cell
    controller = find_pythons.find(controller_py)
    managed = find_pythons.find(managed_py)
    missing = [v for v, p in ((controller_py, controller), (managed_py, managed)) if not p]
    if missing:
        msg = "%s: SKIPPED, no Python %s on this machine" % (name, " or ".join(missing))
        note(msg)
        return "FAILED (missing Python)" if strict else "SKIPPED (missing Python)"

    controller_venv = os.path.join(TMP, venv_dir)
    managed_venv = os.path.join(TMP, "managed-py" + managed_py)
    # The controller needs the runtime requirements too: download_on=controller and
    # delegate_to=localhost run the modules on the controller's own Python.
    ensure_venv(controller_venv, controller, [core_req, RUNTIME_REQUIREMENTS])
    ensure_venv(managed_venv, managed, [RUNTIME_REQUIREMENTS])

    bin_dir = os.path.join(controller_venv, "bin")
    managed_python = os.path.join(managed_venv, "bin", "python")
    expose_controller_ansible(name, os.path.join(bin_dir, "python"), managed_venv)
    core = version_of(os.path.join(bin_dir, "python"),
                      "import ansible.release as r; print(r.__version__)")
    managed_version = version_of(managed_python,
                                 "import platform; print(platform.python_version())")
    note("%s: ansible-core %s on Python %s, modules on Python %s"
         % (name, core, controller_py, managed_version))

    env = dict(os.environ)
    env.update(
        SSB_ANSIBLE_BIN_DIR=bin_dir,
        SSB_MANAGED_PYTHON=managed_python,
        SSB_MATRIX_CELL=name,
        ANSIBLE_PYTHON_INTERPRETER=managed_python,
        ANSIBLE_COLLECTIONS_PATH=os.path.join(TMP, "collections"),
        SSB_COLLECTIONS_PATH=os.path.join(TMP, "collections"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        # The controller under test comes first, so a plain "ansible-playbook" (or
        # ansible-runner, which looks it up on PATH) gets this cell's core.
        PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]),
    )
    began = time.time()
    # A short base for tmp_path: ansible-core 2.21 opens a Unix socket under TMPDIR, whose
    # path must stay under 108 bytes, and tests point TMPDIR below tmp_path.
    basetemp = tempfile.mkdtemp(prefix="ssb-")
    cmd = [harness, "-m", "pytest", "tests/integration", "-p", "no:cacheprovider",
           "--basetemp", basetemp] + pytest_args
    try:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(basetemp, ignore_errors=True)
    spent = time.time() - began
    if rc == 5:
        note("%s: pytest collected no tests in tests/integration" % name)
        return "FAILED (no tests)"
    return ("passed" if rc == 0 else "FAILED (pytest exit %d)" % rc) + " in %.0fs" % spent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harness-python", required=True)
    parser.add_argument("--strict", action="store_true", help="a missing Python fails")
    parser.add_argument("--only", help="run just the cell with this name")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()

    results = []
    for cell in CELLS:
        if args.only and cell[0] != args.only:
            continue
        results.append((cell[0], run_cell(cell, args.harness_python, args.pytest_args,
                                          args.strict)))
    note("summary")
    for name, result in results:
        print("    %-18s %s" % (name, result))
    return 1 if any(result.startswith("FAILED") for name, result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
