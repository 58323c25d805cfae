"""The soak's emulator, and the summary line `make soak` prints and leaves in .tmp.

The Hypothesis profile comes from the command line (make soak: tests/tools/hypothesis_profiles.py,
profile `soak`); nothing here loads another one.
"""

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import support  # noqa: E402
from soak.fault_schedules import TALLY  # noqa: E402

SUMMARY = os.path.join(support.ROOT, '.tmp', 'soak-summary.txt')


@pytest.fixture(scope='module')
def soak_emulator():
    """One emulator for every schedule of a module (each schedule resets its faults)."""
    with support.Emulator() as emu:
        emu.set_exports(count=4)
        yield emu


def summary_line():
    return 'soak: %d schedules drawn, %d held' % (TALLY['drawn'], TALLY['held'])


def pytest_sessionfinish(session, exitstatus):
    if not TALLY['drawn']:
        return
    os.makedirs(os.path.dirname(SUMMARY), exist_ok=True)
    with open(SUMMARY, 'w') as handle:
        handle.write(summary_line() + '\n')


def pytest_terminal_summary(terminalreporter):
    if TALLY['drawn']:
        terminalreporter.write_line(summary_line())
