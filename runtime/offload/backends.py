"""UMAP and HDBSCAN on the GPU (RAPIDS cuML) when a GPU and cuML are there, else on the CPU.

Both backends take the same parameters (runtime.offload.params) and return the same shapes:
2-D coordinates, integer labels (-1 is noise) and membership probabilities.
"""

from __future__ import annotations

import importlib.metadata
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
                return Backend("cuml", f"cuda:0 {gpu}", _versions("cuml", "cupy", *common))
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
