"""The guard's cgroup source (MEMGUARD_CGROUP) over recorded cgroup v2 and v1 files."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.memguard.decide import Sample
from runtime.memguard.source import Reading, SourceError, read_cgroup

MIB = 1024 * 1024
PRESSURE = "some avg10=31.50 avg60=2.00 avg300=0.40 total=123\nfull avg10=12.25 avg60=1.00 avg300=0.20 total=45\n"


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_v2_available_is_the_limit_less_the_working_set_and_psi_is_the_cgroups(tmp_path: Path) -> None:
    """256 MiB limit, 220 MiB charged of which 20 MiB inactive file pages: 56 MiB available."""
    root = cgroup(tmp_path, {
        "memory.max": f"{256 * MIB}\n", "memory.current": f"{220 * MIB}\n",
        "memory.stat": f"anon {190 * MIB}\nfile {30 * MIB}\ninactive_file {20 * MIB}\nactive_file {10 * MIB}\n",
        "memory.pressure": PRESSURE,
    })  # fmt: skip
    assert read_cgroup(root) == Reading(Sample(56 * MIB, 31.5, 12.25), psi=True)


def test_v1_has_no_psi(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {
        "memory.limit_in_bytes": f"{256 * MIB}\n", "memory.usage_in_bytes": f"{100 * MIB}\n",
        "memory.stat": f"inactive_file 0\ntotal_inactive_file {4 * MIB}\n",
    })  # fmt: skip
    assert read_cgroup(root) == Reading(Sample(160 * MIB, 0.0, 0.0), psi=False)


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"memory.max": "max\n", "memory.current": "1\n", "memory.stat": "inactive_file 0\n"}, "no memory limit"),
        ({"memory.limit_in_bytes": "9223372036854771712\n"}, "no memory limit"),
        ({"memory.max": "12k\n"}, "'12k' is not a byte count"),
        ({"memory.max": "1\n", "memory.current": "1\n", "memory.stat": "anon 1\n"}, "no 'inactive_file <n>' line"),
        ({"cpu.max": "max\n"}, "not a memory cgroup"),
    ],
)
def test_a_cgroup_that_tells_nothing_is_an_error_naming_it(tmp_path: Path, files: dict[str, str], words: str) -> None:
    with pytest.raises(SourceError, match=str(tmp_path)) as err:
        read_cgroup(cgroup(tmp_path, files))
    assert words in str(err.value)
