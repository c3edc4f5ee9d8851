"""On a GPU machine with RAPIDS cuML (the GB10 image): the topography backends run on the GPU.

Runs where VLLM_GB10_GPU_TESTS=1; skipped without cuML (it is in the GB10 image, not in the
development virtualenv).
"""

from __future__ import annotations

import pytest

from runtime.offload import backends
from runtime.offload.params import HdbscanParams, UmapParams
from runtime.offload.synthetic import planted_clusters

pytestmark = pytest.mark.gpu


def test_cuml_reduces_and_clusters_planted_data_on_the_gpu() -> None:
    pytest.importorskip("cuml")
    from sklearn.metrics import adjusted_rand_score

    backend = backends.select_backend(want_gpu=True)
    assert backend.name == "cuml", backend.reason
    assert backend.device.startswith("cuda:0 ")
    vectors, truth = planted_clusters(5, 200, 256, seed=3)
    coordinates = backends.reduce(backend, vectors, UmapParams())
    labels, probabilities = backends.cluster(backend, coordinates, HdbscanParams())
    assert coordinates.shape == (1000, 2) and labels.shape == probabilities.shape == (1000,)
    assert adjusted_rand_score(truth, labels) > 0.9
