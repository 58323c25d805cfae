import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import support  # noqa: E402


@pytest.fixture
def emulator():
    """A fresh emulator on 127.0.0.1 and a free port, stopped after the test."""
    with support.Emulator() as emu:
        yield emu
