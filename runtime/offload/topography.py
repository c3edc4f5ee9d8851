"""The topography job: embeddings from Postgres → UMAP → HDBSCAN → results in Postgres.

`run_topography` is the work itself (it runs inside a Ray worker); `topography_on_ray` sends it
to the connected cluster as one task, asking for a GPU when the cluster has one.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg

from runtime.offload import backends
from runtime.offload.embeddings import EmbeddingInputError, read_embeddings
from runtime.offload.memory import peak_rss_bytes
from runtime.offload.params import TopographyParams
from runtime.offload.results import first_duplicate, write_run

log = logging.getLogger("runtime.offload")
MIN_ROWS = 5  # below this UMAP's spectral layout has nothing to work with


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - started, 3)
    log.info("stage %s took %.2fs", name, timings[name])


def run_topography(params: TopographyParams, *, gpu_requested: bool = False, gpu_note: str = "") -> dict[str, Any]:
    """Run the whole job here and return its run record (also written to `<results_table>_runs`).

    Bad input raises EmbeddingInputError before anything is written.
    """
    timings: dict[str, float] = {}
    backend = backends.select_backend(want_gpu=params.use_gpu == "auto")
    with psycopg.connect(params.dsn, application_name=f"topography {params.run_id}") as conn:
        with _stage(timings, "read"):
            embeddings = read_embeddings(conn, params.query)
        ids, id_type, vectors = embeddings.ids, embeddings.id_type, embeddings.vectors
        del embeddings  # the matrix is dropped as soon as UMAP is done with it
        duplicate = first_duplicate(ids)
        if duplicate is not None:
            raise EmbeddingInputError(f"row {duplicate[0]}: id {duplicate[1]!r} appears more than once")
        if len(ids) < MIN_ROWS:
            raise EmbeddingInputError(f"the query returned {len(ids)} rows; UMAP needs at least {MIN_ROWS}")
        rows, dimensions = vectors.shape
        with _stage(timings, "umap"):
            coordinates = backends.reduce(backend, vectors, params.umap)
        del vectors
        with _stage(timings, "hdbscan"):
            labels, probabilities = backends.cluster(backend, coordinates, params.hdbscan)
        record = {
            "run_id": params.run_id,
            "rows": rows,
            "dimensions": dimensions,
            "clusters": int(labels.max()) + 1 if len(labels) else 0,
            "noise_fraction": float(np.mean(labels < 0)),
            "device": backend.device,
            "params": params.stored(),
            "timings": timings,
            "versions": {"python": platform.python_version(), **backend.versions},
            "resources": {
                "gpu_requested": gpu_requested,
                "backend_note": gpu_note or backend.reason,
                "rmm_pool_max_bytes": backend.rmm_pool_max_bytes,
            },
        }
        with _stage(timings, "write"):
            record["resources"]["worker_peak_rss_bytes"] = peak_rss_bytes()
            write_run(
                conn,
                results_table=params.results_table,
                runs_table=params.runs_table,
                run_id=params.run_id,
                id_type=id_type,
                ids=ids,
                coordinates=coordinates,
                labels=labels,
                probabilities=probabilities,
                record=record,
            )
    return record


def _remote_entry(params: dict[str, Any], gpu_requested: bool, gpu_note: str = "") -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    record = run_topography(TopographyParams.model_validate(params), gpu_requested=gpu_requested, gpu_note=gpu_note)
    record["resources"]["worker_peak_rss_bytes"] = peak_rss_bytes()
    return record


def topography_on_ray(params: TopographyParams) -> dict[str, Any]:
    """Run the job as one task on the connected Ray cluster (ray.init first) and return its record.

    The task asks for a GPU when one is free now, and runs in a fresh worker process (max_calls=1)
    so the memory it takes is given back when it ends. A GPU the cluster has but someone holds (vLLM's
    placement group over both boxes in tensor/pipeline mode holds every GPU for as long as it serves)
    is not waited for: asking for it would queue the task forever, so it runs on the CPU and says why.
    """
    import ray

    total = ray.cluster_resources().get("GPU", 0)
    gpu_requested = params.use_gpu == "auto" and ray.available_resources().get("GPU", 0) >= 1
    note = ""
    if params.use_gpu == "auto" and total >= 1 and not gpu_requested:
        note = (
            f"the cluster's {total:g} GPU(s) were all held by other work (e.g. vLLM's placement group): ran on the CPU"
        )
    task = ray.remote(num_gpus=1 if gpu_requested else 0, max_calls=1, max_retries=0)(_remote_entry)
    record: dict[str, Any] = ray.get(task.remote(params.model_dump(), gpu_requested, note))
    return record
