"""The memory guard's decisions over recorded /proc files (runtime.memguard.decide and .source).

tests/unit/memguard holds a /proc/meminfo and a /proc/pressure/memory recorded from a real kernel;
each sequence below rewrites their MemAvailable and avg10 figures sample by sample into a directory
laid out as /proc, reads it back with the guard's own reader and feeds the guard's own state machine,
with the thresholds a stack gets by default (GuardSettings: 2 s samples, recover after 30 s, shed the
next container every 15 s).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from harness.procfiles import RECORDED, ProcFiles
from runtime.memguard import source
from runtime.memguard.decide import GIB, Decider, Level, Thresholds
from runtime.memguard.settings import GuardSettings

DEFAULTS = GuardSettings(host="test").thresholds()
RECOVER, SHED_EVERY = DEFAULTS.recover_samples, DEFAULTS.shed_every_samples
OK, PAUSE, SHED = Level.OK, Level.PAUSE, Level.SHED


def run(tmp_path: Path, samples: Iterable[tuple[float, float, float]]) -> list[tuple[Level, bool]]:
    """(level, shed) after each sample, through the files and the guard's reader."""
    proc, decider, out = ProcFiles(tmp_path / "proc"), Decider(DEFAULTS), []
    for available, some, full in samples:
        proc.write(available, some, full)
        decision = decider.step(source.read(proc.root).sample)
        out.append((decision.level, decision.shed))
    return out


def levels(result: list[tuple[Level, bool]]) -> list[Level]:
    return [level for level, _ in result]


def sheds(result: list[tuple[Level, bool]]) -> list[int]:
    return [i for i, (_, shed) in enumerate(result) if shed]


def changes(result: list[tuple[Level, bool]]) -> list[tuple[int, Level]]:
    """(sample index, new level) at each change."""
    previous, out = OK, []
    for i, (level, _) in enumerate(result):
        if level != previous:
            out.append((i, level))
            previous = level
    return out


def test_the_recorded_files_read_as_the_kernel_wrote_them(tmp_path: Path) -> None:
    reading = source.read(recorded_proc(tmp_path))
    assert reading.psi and reading.sample.available_bytes > 0


def recorded_proc(tmp_path: Path) -> Path:
    root = tmp_path / "recorded"
    (root / "pressure").mkdir(parents=True)
    (root / "meminfo").write_text((RECORDED / "meminfo").read_text())
    (root / "pressure" / "memory").write_text((RECORDED / "pressure-memory").read_text())
    return root


def test_a_slow_climb_pauses_under_8_gib_then_sheds_under_4_and_keeps_shedding_while_it_stays_there(
    tmp_path: Path,
) -> None:
    """MemAvailable falls 1 GiB a sample from 40 GiB to 1 GiB, then stays at 1 GiB; PSI rises gently and
    never crosses a threshold (a slow leak: pressure shows late, MemAvailable shows it)."""
    climb = [(40.0 - i, min(15.0, i * 0.4), min(8.0, i * 0.2)) for i in range(40)]
    result = run(tmp_path, [*climb, *[(1.0, 15.0, 8.0)] * (3 * SHED_EVERY)])
    # 7 GiB is sample 33 (40 - 33); 3 GiB is sample 37
    assert changes(result) == [(33, PAUSE), (37, SHED)]
    # shed at once, then one more container each SHED_EVERY samples while MemAvailable stays under 4 GiB
    assert sheds(result) == [37 + k * SHED_EVERY for k in range(4)]


def test_a_psi_spike_sheds_one_container_and_steps_down_level_by_level_after_30_s_clear(tmp_path: Path) -> None:
    """Plenty of MemAvailable, then PSI full avg10 jumps to 35% (a burst of reclaim stalls) and decays as
    avg10 does. Pressure alone sheds once: avg10 lags the relief, so it never sheds a second container."""
    spike = [(30.0, 60.0, 35.0), (30.0, 45.0, 25.0), (30.0, 30.0, 15.0), (30.0, 15.0, 8.0), (30.0, 8.0, 4.0)]
    quiet = [(30.0, 2.0, 1.0)] * (3 * RECOVER)
    result = run(tmp_path, [(30.0, 0.0, 0.0), *spike, *quiet])
    assert sheds(result) == [1]
    # clear of SHED from the sample whose full avg10 is <= 5 (index 5), clear of PAUSE from the same one
    # (some <= 10): RECOVER samples each
    assert changes(result) == [(1, SHED), (5 + RECOVER - 1, PAUSE), (5 + 2 * RECOVER - 1, OK)]


def test_recovery_needs_12_gib_for_30_s_and_a_dip_restarts_the_count(tmp_path: Path) -> None:
    """Down to 3 GiB (shed), back to 10 GiB (over the pause threshold: SHED -> PAUSE after 30 s, but 10 is
    not the 12 GiB that ends PAUSE), then 20 GiB with one dip to 11 GiB midway: the dip restarts the count."""
    down = [(20.0, 0.0, 0.0), (3.0, 0.0, 0.0)]
    ten = [(10.0, 0.0, 0.0)] * (2 * RECOVER)
    dip_at = RECOVER // 2
    twenty = [(20.0, 0.0, 0.0)] * dip_at + [(11.0, 0.0, 0.0)] + [(20.0, 0.0, 0.0)] * (RECOVER + 2)
    result = run(tmp_path, [*down, *ten, *twenty])
    pause_at = 2 + RECOVER - 1
    ok_at = 2 + len(ten) + dip_at + 1 + RECOVER - 1
    assert changes(result) == [(1, SHED), (pause_at, PAUSE), (ok_at, OK)]
    assert levels(result)[-1] is OK and sheds(result) == [1]


@pytest.mark.parametrize(
    "flap",
    [
        [(7.9, 0.0, 0.0), (8.1, 0.0, 0.0)],  # MemAvailable around the pause threshold
        [(30.0, 21.0, 0.0), (30.0, 19.0, 0.0)],  # PSI some around its pause threshold
        [(7.0, 5.0, 0.0), (11.9, 5.0, 0.0), (12.1, 5.0, 0.0)],  # dipping under, then around the recover margin
    ],
    ids=["available", "psi-some", "recover-margin"],
)
def test_a_reading_that_flaps_around_a_threshold_changes_the_level_once(
    tmp_path: Path, flap: list[tuple[float, float, float]]
) -> None:
    result = run(tmp_path, [(30.0, 0.0, 0.0), *flap * 60])
    assert changes(result) == [(1, PAUSE)]
    assert sheds(result) == []


def test_flapping_around_the_shed_threshold_sheds_once_on_entry_and_only_while_under_it(tmp_path: Path) -> None:
    """3.9 / 4.1 GiB alternately: SHED once; a further container goes only on samples under 4 GiB, one
    each SHED_EVERY samples, never one per flap."""
    result = run(tmp_path, [(30.0, 0.0, 0.0), *[(3.9, 0.0, 0.0), (4.1, 0.0, 0.0)] * 20])
    assert changes(result) == [(1, SHED)]
    shed_at = sheds(result)
    assert shed_at[0] == 1
    assert all(b - a >= SHED_EVERY for a, b in itertools.pairwise(shed_at))
    assert all(result[i][0] is SHED and i % 2 == 1 for i in shed_at)  # odd samples are the 3.9 GiB ones


def test_default_thresholds_are_the_documented_ones() -> None:
    """README "Configuration" justifies these figures; a change here must change it too."""
    assert (DEFAULTS.pause_available_bytes, DEFAULTS.shed_available_bytes, DEFAULTS.recover_available_bytes) == (
        8 * GIB,
        4 * GIB,
        12 * GIB,
    )
    assert (DEFAULTS.pause_some_avg10, DEFAULTS.shed_full_avg10, RECOVER, SHED_EVERY) == (20.0, 10.0, 15, 8)


@pytest.mark.parametrize(
    ("pause", "shed", "recover", "message"),
    [
        (8, 8, 12, "0 < shed < pause < recover"),
        (8, 4, 6, "0 < shed < pause < recover"),
    ],
)
def test_thresholds_out_of_order_are_refused_naming_them(pause: int, shed: int, recover: int, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Thresholds(pause * GIB, shed * GIB, recover * GIB, 20, 10, 1, 1)


def test_a_kernel_without_psi_leaves_memavailable_alone_to_decide(tmp_path: Path) -> None:
    root = recorded_proc(tmp_path)
    (root / "pressure" / "memory").unlink()
    reading = source.read(root)
    assert not reading.psi and (reading.sample.some_avg10, reading.sample.full_avg10) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("meminfo", "MemTotal: 1 kB\n", "meminfo: no 'MemAvailable: <n> kB' line"),
        ("pressure/memory", "garbage\n", "pressure/memory: no 'some avg10=<n>' line"),
    ],
)
def test_a_file_not_in_the_kernels_format_is_an_error_naming_it(
    tmp_path: Path, file: str, text: str, message: str
) -> None:
    root = recorded_proc(tmp_path)
    (root / file).write_text(text)
    with pytest.raises(source.SourceError, match=re.escape(message)):
        source.read(root)
