"""The emulator builds archives on first use, so large data sets cost nothing up front."""

import os

import support


def built(emu):
    return [name for name in os.listdir(os.path.join(emu.state_dir, 'archives'))
            if name.endswith('.zip')]


def test_ten_thousand_small_exports_build_only_the_newest_archive_up_front():
    with support.Emulator() as emu:
        records = emu.set_exports(count=10000, archive_size=0)['records']

        assert len(records) == 10000
        assert len(built(emu)) <= 2  # the start's newest, and the new data set's newest


def test_an_archive_is_built_on_first_download_and_served_the_same_afterwards():
    with support.Emulator() as emu:
        emu.set_exports(count=5)
        oldest = emu.records()[-1]
        before = set(built(emu))

        first = emu.archive_bytes(oldest['id'])

        assert len(set(built(emu)) - before) == 1
        assert emu.archive_bytes(oldest['id']) == first
        assert first.startswith(b'PK')


def test_markers_come_without_building_archives():
    with support.Emulator() as emu:
        emu.set_exports(count=3, secrets=2)
        before = set(built(emu))

        markers = emu.markers()

        assert len(markers) == 3 * 2 * 4  # exports x secrets x fields per template
        assert all(marker.startswith('PLAINTEXT-') for marker in markers)
        assert set(built(emu)) == before
