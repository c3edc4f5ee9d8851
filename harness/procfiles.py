"""A test-only source for the memory guard: a directory shaped like /proc whose meminfo and
pressure/memory the test rewrites, from files recorded on a real kernel (tests/unit/memguard).

The guard reads it as it reads the host's /proc (MEMGUARD_PROC_ROOT). Each file is replaced by a
rename, so a guard reading meanwhile sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RECORDED = Path(__file__).resolve().parent.parent / "tests" / "unit" / "memguard"
GIB = 1024**3


class ProcFiles:
    def __init__(self, root: Path):
        self.root = root
        (root / "pressure").mkdir(parents=True, exist_ok=True)
        self.meminfo = (RECORDED / "meminfo").read_text()
        self.pressure = (RECORDED / "pressure-memory").read_text()

    def write(self, available_gib: float, some: float = 0.0, full: float = 0.0) -> None:
        """MemAvailable in GiB and PSI memory avg10 (percent); the other figures as recorded."""
        kb = int(available_gib * GIB / 1024)
        meminfo = re.sub(r"^MemAvailable:\s+\d+ kB$", f"MemAvailable:   {kb} kB", self.meminfo, flags=re.M)
        pressure = re.sub(r"^some avg10=[\d.]+", f"some avg10={some:.2f}", self.pressure, flags=re.M)
        pressure = re.sub(r"^full avg10=[\d.]+", f"full avg10={full:.2f}", pressure, flags=re.M)
        self._replace(self.root / "meminfo", meminfo)
        self._replace(self.root / "pressure" / "memory", pressure)

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        temporary = path.with_name(path.name + ".new")
        temporary.write_text(text)
        os.replace(temporary, path)
