"""Command line: run or submit an offload job.

    python -m runtime.offload run topography --dsn DSN --query SQL --run-id ID [--address ADDR]
    python -m runtime.offload submit topography --address http://HEAD:8265 --query SQL --run-id ID

`run` connects to a Ray cluster (a local one when no --address is given) and runs the job as a
task; `submit` sends that same `run` command to the cluster through the Ray Jobs API and follows
its status and logs. For `run` the DSN may come from $OFFLOAD_DSN instead of --dsn, which keeps the
password out of the process list. `submit` sends no DSN at all: a job's entrypoint and runtime_env
are shown by the Jobs API and the dashboard, so the job uses the cluster's own $OFFLOAD_DSN, which
the stacks give every Ray node. Both need Ray's token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN
(the stack output rayAuthToken).

Exit status: 0 done, 1 the job failed, 2 bad input or arguments, 3 Ray version mismatch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

from pydantic import ValidationError

from runtime.offload.params import HdbscanParams, TopographyParams, UmapParams

DSN_ENV = "OFFLOAD_DSN"


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=None,
        help=f"run: Postgres connection string without a password (default: ${DSN_ENV}); submit: not accepted",
    )
    parser.add_argument("--query", required=True, help="SQL returning columns id and embedding")
    parser.add_argument("--run-id", required=True, help="results of an earlier run with this id are replaced")
    parser.add_argument("--results-table", default="topography_points", help="[schema.]table for the points")
    parser.add_argument("--n-neighbors", type=int, default=15, help="UMAP n_neighbors")
    parser.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    parser.add_argument("--metric", choices=("cosine", "euclidean"), default="cosine", help="UMAP metric")
    parser.add_argument("--seed", type=int, default=None, help="UMAP random_state (reproducible, slower)")
    parser.add_argument("--min-cluster-size", type=int, default=15, help="HDBSCAN min_cluster_size")
    parser.add_argument("--min-samples", type=int, default=None, help="HDBSCAN min_samples")
    parser.add_argument("--cpu-only", action="store_true", help="never use the GPU, even where there is one")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.offload", description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    run = modes.add_parser("run", help="run a job on a Ray cluster from here (a local cluster by default)")
    run_jobs = run.add_subparsers(dest="job", required=True)
    run_topography = run_jobs.add_parser("topography", help="UMAP + HDBSCAN over embeddings in Postgres")
    _job_arguments(run_topography)
    run_topography.add_argument(
        "--address", default=None, help="Ray address: HOST:6379, ray://HOST:10001 or auto (default: a local cluster)"
    )
    submit = modes.add_parser("submit", help="submit a job through the Ray Jobs API and follow it")
    submit_jobs = submit.add_subparsers(dest="job", required=True)
    submit_topography = submit_jobs.add_parser("topography", help="UMAP + HDBSCAN over embeddings in Postgres")
    _job_arguments(submit_topography)
    submit_topography.add_argument("--address", required=True, help="the Jobs API: http://HEAD:8265")
    submit_topography.add_argument("--no-wait", action="store_true", help="print the job id and return")
    submit_topography.add_argument("--python", default="python", help="the cluster's Python command")
    return parser


# `submit` checks the job's parameters here, before anything is sent, with this in place of the DSN that
# the cluster's nodes hold.
CLUSTER_DSN = "postgresql://the-cluster-offload-dsn"


def _has_password(dsn: str) -> bool:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except psycopg.ProgrammingError:  # unparsable: it fails later, naming itself; here only a password matters
        return ":" in dsn.partition("@")[0].partition("//")[2]


def params_from(args: argparse.Namespace) -> TopographyParams:
    if args.mode == "submit":
        if args.dsn is not None:
            raise ValueError(
                "submit sends no DSN (a job's runtime_env and entrypoint are visible in the Ray dashboard): "
                f"the job uses the cluster's ${DSN_ENV}, which the stacks set on every Ray node"
            )
        dsn: str | None = CLUSTER_DSN
    else:
        if args.dsn is not None and _has_password(args.dsn):
            raise ValueError(
                f"--dsn holds a password, which `ps` and the Ray dashboard's job list would show: put the DSN in "
                f"${DSN_ENV} instead"
            )
        dsn = args.dsn if args.dsn is not None else os.environ.get(DSN_ENV)
    if not dsn:
        raise ValueError(f"no Postgres DSN: pass --dsn or set ${DSN_ENV}")
    return TopographyParams(
        dsn=dsn,
        query=args.query,
        run_id=args.run_id,
        results_table=args.results_table,
        umap=UmapParams(
            n_neighbors=args.n_neighbors, min_dist=args.min_dist, metric=args.metric, random_state=args.seed
        ),
        hdbscan=HdbscanParams(min_cluster_size=args.min_cluster_size, min_samples=args.min_samples),
        use_gpu="never" if args.cpu_only else "auto",
    )


def _run(args: argparse.Namespace, params: TopographyParams) -> int:
    import ray

    from runtime.offload.cluster import connect
    from runtime.offload.embeddings import EmbeddingInputError
    from runtime.offload.topography import topography_on_ray

    connect(args.address, logging_level=logging.WARNING, log_to_driver=True)
    try:
        record = topography_on_ray(params)
    except EmbeddingInputError as error:
        cause = getattr(error, "cause", error)  # Ray wraps the task's exception
        print(f"error: {cause}; nothing was written for run {params.run_id!r}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    print(json.dumps(record, sort_keys=True))
    return 0


def _submit(args: argparse.Namespace, params: TopographyParams) -> int:
    from runtime.offload.cluster import submit_and_follow

    argv = [args.python, "-m", "runtime.offload", "run", "topography", "--address", "auto"]
    argv += ["--query", params.query, "--run-id", params.run_id, "--results-table", params.results_table]
    argv += ["--n-neighbors", str(params.umap.n_neighbors), "--min-dist", str(params.umap.min_dist)]
    argv += ["--metric", params.umap.metric, "--min-cluster-size", str(params.hdbscan.min_cluster_size)]
    if params.umap.random_state is not None:
        argv += ["--seed", str(params.umap.random_state)]
    if params.hdbscan.min_samples is not None:
        argv += ["--min-samples", str(params.hdbscan.min_samples)]
    if params.use_gpu == "never":
        argv.append("--cpu-only")
    job = submit_and_follow(args.address, " ".join(shlex.quote(part) for part in argv), wait=not args.no_wait)
    if args.no_wait:
        print(job.job_id)
        return 0
    print(f"job {job.job_id} ended {job.status}", file=sys.stderr)
    return 0 if job.status == "SUCCEEDED" else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        params = params_from(args)
    except (ValueError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from runtime.offload.cluster import RayVersionMismatchError

    try:
        return _run(args, params) if args.mode == "run" else _submit(args, params)
    except RayVersionMismatchError as mismatch:
        print(f"error: {mismatch}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
