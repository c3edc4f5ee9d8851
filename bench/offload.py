"""Offload benchmark: the topography job on 12,000 × 4096 embeddings, Postgres to Postgres.

  python -m bench.offload [--rows 12000] [--dimensions 4096] [--clusters 20]

Everything runs on this machine: a throwaway Postgres and a one-node Ray cluster (2 CPUs).
(a) The read stage alone, each in a fresh process, peak memory side by side: the seeds'
    orchestrator pattern (psycopg fetchall → per-row Python lists → np.array) against ours
    (binary COPY into one float32 matrix).
(b) The whole job through `python -m runtime.offload run topography --address ...`: the wall time of
    each stage, the peak memory of the client process (target < 300 MB: it does no heavy lifting)
    and of the Ray worker that ran the task (target < 2 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from harness.servers import ROOT, PostgresServer, RayHead
from runtime.offload.synthetic import load_embeddings, planted_clusters

MB = 1024 * 1024
CLIENT_TARGET = 300 * MB
WORKER_TARGET = 2048 * MB
QUERY = "SELECT id, embedding FROM docs"


@dataclass
class Measured:
    returncode: int
    seconds: float
    peak_rss: int  # bytes: the process's own VmHWM
    stdout: str
    stderr: str


# Runs a module as __main__ and, at exit, writes the process's own peak RSS (VmHWM) to a file.
# Not wait4's rusage: Linux carries the parent's peak across fork+exec into the child's ru_maxrss,
# which would charge this benchmark's own memory to the process measured.
_PEAK_WRAPPER = """
import atexit, os, runpy, sys
from runtime.offload.memory import peak_rss_bytes
def _report():
    with open(os.environ["BENCH_PEAK_RSS_FILE"], "w") as out:
        out.write(str(peak_rss_bytes()))
atexit.register(_report)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def measure(module: str, args: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run `python -m module args` and read its own peak RSS, which it reports as it exits."""
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", _PEAK_WRAPPER, module, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {}), "BENCH_PEAK_RSS_FILE": peak.name},
        )
        seconds = time.perf_counter() - started
        reported = peak.read().strip()
    return Measured(result.returncode, seconds, int(reported or 0), result.stdout, result.stderr)


def read_naively(dsn: str) -> None:
    """The seeds' pattern: every embedding becomes a Python list of floats, then one array."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(QUERY).fetchall()
    ids = [row[0] for row in rows]
    vectors = np.array([row[1] for row in rows], dtype=np.float32)
    print(json.dumps({"rows": len(ids), "shape": list(vectors.shape)}))


def read_streaming(dsn: str) -> None:
    from runtime.offload.embeddings import read_embeddings

    with psycopg.connect(dsn) as conn:
        embeddings = read_embeddings(conn, QUERY)
    print(json.dumps({"rows": len(embeddings.ids), "shape": list(embeddings.vectors.shape)}))


def mark(value: int, target: int) -> str:
    return "meets target" if value < target else "MISSES target"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=12_000)
    parser.add_argument("--dimensions", type=int, default=4096)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--read-only", choices=("naive", "streaming"), help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_only:
        (read_naively if args.read_only == "naive" else read_streaming)(args.dsn)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-offload-"))
    postgres, ray_head = PostgresServer(work), RayHead(work, num_cpus=2)
    postgres.start()
    ray_head.start(timeout=120)
    try:
        vectors, truth = planted_clusters(args.clusters, args.rows // args.clusters, args.dimensions, seed=7)
        started = time.perf_counter()
        with psycopg.connect(postgres.dsn) as conn:
            load_embeddings(conn, "docs", vectors)
        print(f"setup: {len(vectors):,} × {args.dimensions} float32 embeddings loaded into Postgres "
              f"in {time.perf_counter() - started:.1f} s ({vectors.nbytes / MB:.0f} MB as float32)")  # fmt: skip
        del vectors

        print("\n(a) read stage alone, fresh process each        time      peak RSS")
        for mode, label in (
            ("naive", "seeds: fetchall → lists → np.array"),
            ("streaming", "ours: binary COPY → float32"),
        ):
            read = measure("bench.offload", ["--read-only", mode, "--dsn", postgres.dsn])
            if read.returncode != 0:
                raise SystemExit(f"{mode} read failed:\n{read.stderr[-3000:]}")
            print(f"    {label:<42} {read.seconds:6.1f} s  {read.peak_rss / MB:7.0f} MB")

        job = measure(
            "runtime.offload",
            ["run", "topography", "--dsn", postgres.dsn, "--query", QUERY, "--run-id", "bench",
             "--address", ray_head.address],
            env=ray_head.client_env,
        )  # fmt: skip
        if job.returncode != 0:
            raise SystemExit(f"the job failed:\n{job.stderr[-3000:]}")
        record = json.loads(job.stdout.strip().splitlines()[-1])
        worker_peak = record["resources"]["worker_peak_rss_bytes"]
        with psycopg.connect(postgres.dsn) as conn:
            found: dict[int, int] = dict(
                conn.execute("SELECT id, cluster FROM topography_points WHERE run_id = 'bench'").fetchall()
            )
        from sklearn.metrics import adjusted_rand_score

        ari = adjusted_rand_score(truth, [found[i] for i in range(len(truth))])
        print(f"\n(b) the whole job via Ray ({record['device']}), {record['rows']:,} × {record['dimensions']}")
        for stage in ("read", "umap", "hdbscan", "write"):
            print(f"    {stage:<8} {record['timings'][stage]:8.1f} s")
        print(f"    total    {job.seconds:8.1f} s  (client wall time, Ray connection included)")
        print(f"    client peak RSS {job.peak_rss / MB:7.0f} MB  ({mark(job.peak_rss, CLIENT_TARGET)}: < 300 MB)")
        print(f"    worker peak RSS {worker_peak / MB:7.0f} MB  ({mark(worker_peak, WORKER_TARGET)}: < 2048 MB)")
        print(f"    clusters found {record['clusters']} of {args.clusters} planted; noise "
              f"{record['noise_fraction']:.1%}; adjusted Rand index {ari:.3f}")  # fmt: skip
    finally:
        ray_head.stop()
        postgres.stop()


if __name__ == "__main__":
    main()
