"""pytest plugin: Hypothesis profiles for the soak run (make soak).

Loaded with ``-p hypothesis_profiles`` (tests/tools on PYTHONPATH) and picked with
``--hypothesis-profile soak``. Registered at import time, before Hypothesis's own pytest
plugin loads the chosen profile. SSB_SOAK_EXAMPLES raises the example count (never below
1000, the soak floor).
"""

import os

from hypothesis import HealthCheck, settings

SOAK_FLOOR = 1000

settings.register_profile(
    "soak",
    max_examples=max(SOAK_FLOOR, int(os.environ.get("SSB_SOAK_EXAMPLES", SOAK_FLOOR))),
    # Examples that talk to the emulator vary in time; a soak looks for wrong answers.
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
