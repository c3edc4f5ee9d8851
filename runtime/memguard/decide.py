"""The guard's decisions as a pure state machine: samples in, a level and what to do out.

Levels: OK (nothing), PAUSE (no new batch work on this host), SHED (stop the next container in the
shed order). Escalation is immediate: a box out of unified memory freezes within seconds, and PSI's
avg10 is already a ten-second average, so one sample over a threshold is enough. De-escalation goes
one level at a time and only after `recover_samples` samples in a row are clear of the current level
by a margin (hysteresis): MemAvailable back above the next threshold up (`recover_available_bytes`
to leave PAUSE, `pause_available_bytes` to leave SHED) and the PSI figure that raised the level back
under half its threshold. A reading that hovers around one threshold therefore changes the level
once, not on every sample.

While the level stays SHED, the next container is shed every `shed_every_samples` samples, but only
while MemAvailable itself is under the shed threshold: PSI's avg10 lags the relief a stopped
container brings by about ten seconds, so pressure alone sheds one container per episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

GIB = 1024**3


class Level(IntEnum):
    OK = 0
    PAUSE = 1
    SHED = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Sample:
    """One reading of the host: MemAvailable (bytes) and PSI memory avg10 (percent of wall time)."""

    available_bytes: int
    some_avg10: float
    full_avg10: float


@dataclass(frozen=True)
class Thresholds:
    pause_available_bytes: int
    shed_available_bytes: int
    recover_available_bytes: int
    pause_some_avg10: float
    shed_full_avg10: float
    recover_samples: int  # clear samples in a row before stepping down one level
    shed_every_samples: int  # while SHED by MemAvailable: samples between two containers stopped

    def __post_init__(self) -> None:
        if not 0 < self.shed_available_bytes < self.pause_available_bytes < self.recover_available_bytes:
            raise ValueError(
                "memory guard thresholds must satisfy 0 < shed < pause < recover available bytes, got "
                f"shed={self.shed_available_bytes} pause={self.pause_available_bytes} "
                f"recover={self.recover_available_bytes}"
            )
        if not (0 < self.pause_some_avg10 <= 100 and 0 < self.shed_full_avg10 <= 100):
            raise ValueError(
                f"memory guard PSI thresholds must be in (0, 100]: pause some={self.pause_some_avg10} "
                f"shed full={self.shed_full_avg10}"
            )
        if self.recover_samples < 1 or self.shed_every_samples < 1:
            raise ValueError(
                f"memory guard: recover_samples ({self.recover_samples}) and shed_every_samples "
                f"({self.shed_every_samples}) must be at least 1"
            )


def demanded(sample: Sample, t: Thresholds) -> Level:
    """The level one sample calls for, with no history."""
    if sample.available_bytes < t.shed_available_bytes or sample.full_avg10 > t.shed_full_avg10:
        return Level.SHED
    if sample.available_bytes < t.pause_available_bytes or sample.some_avg10 > t.pause_some_avg10:
        return Level.PAUSE
    return Level.OK


def clear_of(level: Level, sample: Sample, t: Thresholds) -> bool:
    """Whether `sample` is clear of `level` by the hysteresis margin (so the level may step down)."""
    if level is Level.SHED:
        return sample.available_bytes >= t.pause_available_bytes and sample.full_avg10 <= t.shed_full_avg10 / 2
    if level is Level.PAUSE:
        return (
            sample.available_bytes >= t.recover_available_bytes
            and sample.some_avg10 <= t.pause_some_avg10 / 2
            and sample.full_avg10 <= t.shed_full_avg10 / 2
        )
    return True


def reason(sample: Sample, t: Thresholds) -> str:
    """Why `sample` demands what it does, in words for the log and the pause key."""
    gib = sample.available_bytes / GIB
    return (
        f"MemAvailable {gib:.2f} GiB (pause < {t.pause_available_bytes / GIB:g}, shed < "
        f"{t.shed_available_bytes / GIB:g}), PSI some avg10 {sample.some_avg10:g} (pause > {t.pause_some_avg10:g}), "
        f"full avg10 {sample.full_avg10:g} (shed > {t.shed_full_avg10:g})"
    )


@dataclass(frozen=True)
class Decision:
    level: Level
    previous: Level
    shed: bool  # stop the next container in the shed order now

    @property
    def changed(self) -> bool:
        return self.level != self.previous


class Decider:
    """Feed it one sample per interval; it says the level and when to shed."""

    def __init__(self, thresholds: Thresholds, level: Level = Level.OK):
        self.t = thresholds
        self.level = level
        self._clear = 0  # clear samples in a row at the current level
        self._since_shed = 0  # samples since the last shed, while SHED

    def step(self, sample: Sample) -> Decision:
        previous, wanted = self.level, demanded(sample, self.t)
        shed = False
        if wanted > self.level:
            self.level, self._clear = wanted, 0
            if wanted is Level.SHED:
                shed, self._since_shed = True, 0
        elif self.level is not Level.OK and clear_of(self.level, sample, self.t):
            self._clear += 1
            if self._clear >= self.t.recover_samples:
                self.level, self._clear = Level(self.level - 1), 0
        else:
            self._clear = 0
        if self.level is Level.SHED and not shed:
            self._since_shed += 1
            if self._since_shed >= self.t.shed_every_samples and sample.available_bytes < self.t.shed_available_bytes:
                shed, self._since_shed = True, 0
        return Decision(self.level, previous, shed)
