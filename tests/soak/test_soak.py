"""Randomized fault schedules against secretserver_export_fetch (make soak: 1,000 or more).

The number of schedules comes from the active Hypothesis profile, never from this file:
`make soak` selects the profile `soak` of tests/tools/hypothesis_profiles.py. The schedules,
the runs and the invariant are in fault_schedules.py; tests/integration/test_faults.py runs a
few dozen of the same schedules in `make test`.
"""

from hypothesis import HealthCheck, given, settings

from soak.fault_schedules import check_schedule, schedules


# deadline=None: a schedule with a stalled download takes a second by design. Only the
# deadline and health checks are set here, so max_examples stays the profile's.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules())
def test_every_fault_schedule_leaves_dest_whole_and_the_result_true(soak_emulator, schedule):
    check_schedule(soak_emulator, schedule, soak_emulator.records())
