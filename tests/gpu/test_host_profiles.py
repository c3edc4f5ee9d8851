"""On a machine with an NVIDIA GPU: the KV policy's profile for that GPU matches what CUDA reports.

Runs where VLLM_GB10_GPU_TESTS=1 (the device machine, or a GB10 host); skipped elsewhere.
"""

from __future__ import annotations

import pytest

from runtime.kvcache.hosts import GIB, PROFILES

pytestmark = pytest.mark.gpu
PROFILE_BY_NAME = {"GB10": "gb10", "H100": "h100", "RTX 4090": "rtx4090", "RTX 4080": "rtx4080"}


def test_the_profile_of_this_gpu_matches_cudas_total_memory() -> None:
    torch = pytest.importorskip("torch")
    assert torch.cuda.is_available(), "no CUDA device visible"
    name = torch.cuda.get_device_name(0)
    matches = [profile for key, profile in PROFILE_BY_NAME.items() if key in name]
    assert matches, f"no KV policy profile for {name!r}; add one to runtime/kvcache/hosts.py"
    total = torch.cuda.get_device_properties(0).total_memory
    profile = PROFILES[matches[0]]
    print(f"{name}: CUDA total {total / GIB:.2f} GiB, profile {profile.name} {profile.gpu_memory_gib} GiB")
    assert abs(profile.gpu_memory_gib * GIB - total) / total < 0.01


def test_free_memory_at_the_profiles_utilisation_covers_the_plan() -> None:
    torch = pytest.importorskip("torch")
    free, total = torch.cuda.mem_get_info(0)
    name = torch.cuda.get_device_name(0)
    profile = next(PROFILES[p] for key, p in PROFILE_BY_NAME.items() if key in name)
    planned = profile.gpu_memory_gib * GIB * profile.max_gpu_memory_utilization
    print(f"free {free / GIB:.2f} GiB of {total / GIB:.2f}; the policy plans with {planned / GIB:.2f} GiB")
    assert planned <= free, "the policy plans with more memory than an idle GPU has free"
