"""UMAP and HDBSCAN on the GPU (RAPIDS cuML) when a GPU and cuML are there, else on the CPU.

Both backends take the same parameters (runtime.offload.params) and return the same shapes:
2-D coordinates, integer labels (-1 is noise) and membership probabilities.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.offload.params import HdbscanParams, UmapParams


@dataclass(frozen=True)
class Backend:
    name: str  # "cuml" or "cpu"
    device: str  # what ran it, for the run record: "cpu" or the GPU's name
    versions: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # why this backend, when the GPU was wanted but not used
    rmm_pool_max_bytes: int | None = None  # cuML's memory pool cap (None: RMM's default, the whole GPU)


# The most cuML's RMM pool may grow to, in bytes: set on the Ray workers by the stacks (infra
# ray_cluster.rmm_pool_max_bytes: half the worker's memory limit). RMM's default pool starts at half of
# what the GPU reports and grows to all of it: on GB10 that is the box's unified memory, which no cgroup
# limit counts, and running out of it freezes the box.
RMM_POOL_ENV = "OFFLOAD_RMM_POOL_MAX_BYTES"
RMM_INITIAL_POOL_BYTES = 1024**3  # what the pool takes at once; it grows on demand up to the cap
RMM_ALIGNMENT = 256  # RMM's pool sizes are multiples of 256 bytes


def rmm_pool_sizes(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(initial, maximum) pool bytes from $OFFLOAD_RMM_POOL_MAX_BYTES; None when it is unset."""
    raw = environ.get(RMM_POOL_ENV, "").strip()
    if not raw:
        return None
    try:
        maximum = int(raw)
    except ValueError:
        raise ValueError(f"${RMM_POOL_ENV}: {raw!r} is not a number of bytes") from None
    maximum -= maximum % RMM_ALIGNMENT
    if maximum <= 0:
        raise ValueError(f"${RMM_POOL_ENV}: {raw!r} leaves cuML no memory (at least {RMM_ALIGNMENT} bytes)")
    return min(RMM_INITIAL_POOL_BYTES, maximum), maximum


def cap_rmm_pool(environ: Mapping[str, str] = os.environ) -> int | None:
    """Before cuML allocates: a pool capped at $OFFLOAD_RMM_POOL_MAX_BYTES for RMM, and CuPy allocating
    from it too (cuML hands CuPy arrays around). Returns the cap; None: unset, RMM's defaults stay.
    API: rmm.reinitialize(pool_allocator, initial_pool_size, maximum_pool_size) (rmm/rmm.py) and
    rmm.allocators.cupy.rmm_cupy_allocator."""
    sizes = rmm_pool_sizes(environ)
    if sizes is None:
        return None
    import cupy
    import rmm
    from rmm.allocators.cupy import rmm_cupy_allocator

    initial, maximum = sizes
    rmm.reinitialize(pool_allocator=True, initial_pool_size=initial, maximum_pool_size=maximum)
    cupy.cuda.set_allocator(rmm_cupy_allocator)
    return maximum


def _versions(*packages: str) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _gpu_name() -> str | None:
    """The first visible CUDA device's name, through cupy (a cuML dependency); None without one."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    except cupy.cuda.runtime.CUDARuntimeError:
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


def select_backend(want_gpu: bool) -> Backend:
    common = ("numpy", "ray", "psycopg")
    if want_gpu:
        try:
            import cuml  # noqa: F401 - presence check
        except ImportError:
            reason = "cuML is not installed"
        else:
            gpu = _gpu_name()
            if gpu is not None:
                cap = cap_rmm_pool()
                return Backend(
                    "cuml", f"cuda:0 {gpu}", _versions("cuml", "cupy", "rmm", *common), rmm_pool_max_bytes=cap
                )
            reason = "no CUDA device is visible"
        return Backend("cpu", "cpu", _versions("umap-learn", "hdbscan", "scikit-learn", *common), reason)
    return Backend("cpu", "cpu", _versions("umap-learn", "hdbscan", "scikit-learn", *common))


def reduce(backend: Backend, vectors: np.ndarray, params: UmapParams) -> np.ndarray:
    """(rows, dims) float32 → (rows, 2) float32 coordinates."""
    kwargs = {
        "n_components": 2,
        "n_neighbors": min(params.n_neighbors, len(vectors) - 1),
        "min_dist": params.min_dist,
        "metric": params.metric,
        "random_state": params.random_state,
    }
    if backend.name == "cuml":
        from cuml.manifold import UMAP
    else:
        from umap import UMAP
    coordinates = UMAP(**kwargs).fit_transform(vectors)
    return np.asarray(_to_host(coordinates), dtype=np.float32)


def cluster(backend: Backend, coordinates: np.ndarray, params: HdbscanParams) -> tuple[np.ndarray, np.ndarray]:
    """Labels (-1 = noise) and membership probabilities of each point."""
    kwargs = params.model_dump()
    if backend.name == "cuml":
        from cuml.cluster import HDBSCAN
    else:
        from hdbscan import HDBSCAN
    model = HDBSCAN(**kwargs).fit(coordinates)
    labels = np.asarray(_to_host(model.labels_), dtype=np.int32)
    probabilities = np.asarray(_to_host(model.probabilities_), dtype=np.float32)
    return labels, probabilities


def _to_host(array: Any) -> Any:
    """cuML may hand back device arrays; bring them to host memory."""
    getter = getattr(array, "get", None)
    return getter() if callable(getter) else array
