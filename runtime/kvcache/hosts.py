"""Host profiles: how much memory vLLM may plan with on each kind of machine."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3


@dataclass(frozen=True)
class HostProfile:
    name: str
    gpu_memory_gib: float  # what CUDA reports as total on one GPU
    unified: bool  # CPU and GPU share one pool (GB10): no KV offload, page cache competes
    max_gpu_memory_utilization: float  # highest share that starts reliably
    overhead_gib: float  # vLLM's own non-KV, non-weight memory (activations, CUDA graphs, allocator)
    host_ram_gib: float = 0.0  # CPU RAM beside a discrete GPU, for KV offload

    def __post_init__(self) -> None:
        if self.gpu_memory_gib <= 0 or self.overhead_gib < 0 or self.host_ram_gib < 0:
            raise ValueError(f"host profile {self.name}: memory sizes must be positive")
        if not 0 < self.max_gpu_memory_utilization <= 0.95:
            raise ValueError(f"host profile {self.name}: max_gpu_memory_utilization must be in (0, 0.95]")


PROFILES: dict[str, HostProfile] = {
    # GB10: 128 GB LPDDR5x shared with the CPU; 0.92 runs out of memory at start-up (vLLM issues
    # 35313, 46307, 56824), so at most 0.85, KV sized explicitly, ~6 GiB for vLLM's own use.
    "gb10": HostProfile("gb10", gpu_memory_gib=119.7, unified=True, max_gpu_memory_utilization=0.85, overhead_gib=6.0),
    # The 64 GB GB10 (DGX Spark and OEM boxes ship both sizes): half the 128 GB box's 119.7 GiB, the same
    # carve-out share; an estimate until measured on one. The preflight holds the box's MemTotal to it (±8%).
    "gb10-64": HostProfile("gb10-64", 59.8, unified=True, max_gpu_memory_utilization=0.85, overhead_gib=6.0),
    "h100": HostProfile("h100", 79.2, False, 0.90, 4.0, host_ram_gib=256.0),
    "rtx4090": HostProfile("rtx4090", 23.6, False, 0.90, 2.0, host_ram_gib=64.0),
    "rtx4080": HostProfile("rtx4080", 15.6, False, 0.90, 2.0, host_ram_gib=32.0),
}


def load_profiles(path: Path | None = None) -> dict[str, HostProfile]:
    """Built-in profiles, plus custom ones from a JSON file: {"name": {field: value, ...}, ...}."""
    profiles = dict(PROFILES)
    if path is None:
        return profiles
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read host profiles: {err}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected an object of profiles by name")
    for name, fields in document.items():
        try:
            profiles[name] = HostProfile(name=name, **fields)
        except TypeError as err:
            raise ValueError(f"{path}: profile {name!r}: {err}") from None
    return profiles
