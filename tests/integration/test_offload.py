"""The topography job against a real Postgres and a real one-node Ray cluster.

Planted clusters: 5 Gaussian blobs of 100 points in 96 dimensions whose centres lie on random
directions; within a cluster the cosine similarity is about 0.9, across clusters about 0. UMAP +
HDBSCAN should recover them almost exactly; an adjusted Rand index above 0.9 still allows HDBSCAN
to call a few boundary points noise (-1), but not to merge or split a cluster (merging two of
five drops the ARI to about 0.75, splitting one to about 0.9 or less).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import psycopg
import pytest
from sklearn.metrics import adjusted_rand_score

from harness.servers import ROOT, PostgresServer, RayHead
from runtime.offload.embeddings import BLOCK_ROWS, EmbeddingInputError, read_embeddings
from runtime.offload.params import TopographyParams
from runtime.offload.results import write_run
from runtime.offload.synthetic import load_embeddings, planted_clusters
from runtime.offload.topography import run_topography

PLANTED = {"clusters": 5, "per_cluster": 100, "dimensions": 96}
QUERY = "SELECT id, embedding FROM docs"
CLI_TIMEOUT = 300


def new_database(server: PostgresServer) -> str:
    """A fresh database on the shared server; its DSN carries a password that trust auth ignores,
    so tests can check the password never shows up anywhere."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres:pw-{name}@127.0.0.1:{server.port}/{name}"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.offload", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env={**os.environ, **(env or {})},
    )


def points(dsn: str, run_id: str, table: str = "topography_points") -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            f"SELECT id, x, y, cluster, probability FROM {table} WHERE run_id = %s ORDER BY id", (run_id,)
        ).fetchall()


def run_records(dsn: str, run_id: str, table: str = "topography_points_runs") -> list[dict]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(f"SELECT * FROM {table} WHERE run_id = %s", (run_id,)).fetchall()


@pytest.fixture(scope="module")
def planted(postgres_server: PostgresServer) -> tuple[str, np.ndarray]:
    """A database whose table `docs` holds the planted clusters; returns (dsn, true labels by id)."""
    dsn = new_database(postgres_server)
    vectors, truth = planted_clusters(**PLANTED, seed=1)
    with psycopg.connect(dsn) as conn:
        load_embeddings(conn, "docs", vectors)
    return dsn, truth


@pytest.fixture(scope="module")
def ray_head(planted, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """One node with 2 CPUs and one declared GPU: tasks that ask for a GPU get scheduled, and the
    job falls back to the CPU libraries because this machine has neither a GPU nor cuML. The node
    holds the planted database's DSN as OFFLOAD_DSN, as the stacks' Ray nodes hold theirs."""
    head = RayHead(tmp_path_factory.mktemp("ray"), num_cpus=2, num_gpus=1, node_env={"OFFLOAD_DSN": planted[0]})
    head.start(timeout=120)
    yield head
    head.stop()


@pytest.fixture(scope="module")
def first_run(planted, ray_head: RayHead) -> subprocess.CompletedProcess[str]:
    dsn, _ = planted
    return cli(
        "run", "topography", "--query", QUERY, "--run-id", "planted", "--address", ray_head.address,
        env={"OFFLOAD_DSN": dsn, **ray_head.client_env},
    )  # fmt: skip


def test_run_recovers_the_planted_clusters(planted, first_run) -> None:
    dsn, truth = planted
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    rows = points(dsn, "planted")
    assert [row[0] for row in rows] == list(range(len(truth)))  # every id once
    found = np.array([row[3] for row in rows])
    assert adjusted_rand_score(truth, found) > 0.9
    assert len(set(found.tolist()) - {-1}) == PLANTED["clusters"]
    assert all(0.0 <= row[4] <= 1.0 and np.isfinite(row[1]) and np.isfinite(row[2]) for row in rows)


def test_the_run_record_says_what_ran_and_where(planted, first_run) -> None:
    dsn, truth = planted
    (record,) = run_records(dsn, "planted")
    assert (record["rows"], record["dimensions"], record["clusters"]) == (len(truth), 96, PLANTED["clusters"])
    assert set(record["timings"]) == {"read", "umap", "hdbscan"}  # the write's own time is in the printed record
    assert {"python", "ray", "umap-learn", "hdbscan", "numpy"} <= set(record["versions"])
    # The cluster declares a GPU, so the task asked for one; without cuML it ran on the CPU and says why.
    assert record["resources"]["gpu_requested"] is True
    assert (record["device"], record["resources"]["backend_note"]) == ("cpu", "cuML is not installed")
    assert record["resources"]["rmm_pool_max_bytes"] is None  # no cuML, no RMM pool to cap
    assert record["resources"]["worker_peak_rss_bytes"] > 0
    assert record["params"]["umap"]["n_neighbors"] == 15
    assert "dsn" not in record["params"] and "pw-" not in json.dumps(record, default=str)
    printed = json.loads(first_run.stdout.strip().splitlines()[-1])
    assert printed["run_id"] == "planted" and printed["clusters"] == PLANTED["clusters"]
    assert set(printed["timings"]) == {"read", "umap", "hdbscan", "write"}


def test_submit_through_the_jobs_api_replaces_the_same_run_id(planted, first_run, ray_head: RayHead) -> None:
    dsn, truth = planted
    assert first_run.returncode == 0
    (before,) = run_records(dsn, "planted")
    result = cli(
        "submit", "topography", "--address", ray_head.jobs_url, "--query", QUERY, "--run-id", "planted",
        "--min-cluster-size", "20", env=ray_head.client_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "submitted job raysubmit_" in result.stdout
    followed = json.loads(result.stdout.strip().splitlines()[-1])  # the driver's output, from the job's log
    assert followed["run_id"] == "planted" and followed["params"]["hdbscan"]["min_cluster_size"] == 20
    assert "ended SUCCEEDED" in result.stderr
    assert "pw-" not in result.stdout
    # The job runs with the node's OFFLOAD_DSN: nothing the Jobs API or the dashboard shows holds it.
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(ray_head.jobs_url, headers={"Authorization": f"Bearer {ray_head.token}"}).list_jobs()
    assert jobs and "pw-" not in json.dumps([job.dict() for job in jobs], default=str)
    assert len(points(dsn, "planted")) == len(truth)  # replaced, not added to
    (after,) = run_records(dsn, "planted")
    assert after["params"]["hdbscan"]["min_cluster_size"] == 20
    assert after["finished_at"] > before["finished_at"]


def test_the_interactive_ray_client_path_runs_the_same_task(planted, ray_head: RayHead) -> None:
    """The seeds' notebook path: ray.init("ray://HEAD:10001"), then the task from Python."""
    dsn, truth = planted
    script = (
        "import json, sys\n"
        "from runtime.offload.cluster import connect\n"
        "from runtime.offload.params import TopographyParams\n"
        "from runtime.offload.topography import topography_on_ray\n"
        "connect(sys.argv[1])\n"
        "params = TopographyParams(dsn=sys.argv[2], query=sys.argv[3], run_id='interactive')\n"
        "print(json.dumps(topography_on_ray(params)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, ray_head.client_address, dsn, QUERY],
        cwd=ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT, env={**os.environ, **ray_head.client_env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["rows"] == len(truth)
    assert len(points(dsn, "interactive")) == len(truth)


_WITH_THE_GPU_HELD = (
    "import json, sys\n"
    "import ray\n"
    "from ray.util.placement_group import placement_group\n"
    "from runtime.offload.params import TopographyParams\n"
    "from runtime.offload.topography import topography_on_ray\n"
    "ray.init(address=sys.argv[1])\n"
    "held = placement_group([{'GPU': 1}])  # as vLLM's placement group holds the GPUs in tensor mode\n"
    "ray.get(held.ready(), timeout=60)\n"
    "params = TopographyParams(dsn=sys.argv[2], query=sys.argv[3], run_id='gpu-held')\n"
    "print(json.dumps(topography_on_ray(params)))\n"
)


def test_a_gpu_held_by_other_work_is_not_waited_for(planted, ray_head: RayHead) -> None:
    dsn, truth = planted
    result = subprocess.run(
        [sys.executable, "-c", _WITH_THE_GPU_HELD, ray_head.address, dsn, QUERY],
        cwd=ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT, env={**os.environ, **ray_head.client_env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["rows"] == len(truth) and record["device"] == "cpu"
    assert record["resources"]["gpu_requested"] is False
    assert "GPU(s) were all held by other work" in record["resources"]["backend_note"]


_SET_PYTHON_VERSION = """
import json, sys
from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY as KEY
from ray._private.ray_constants import KV_NAMESPACE_CLUSTER as NAMESPACE
from ray._raylet import GcsClient
gcs = GcsClient(address=sys.argv[1])
metadata = json.loads(gcs.internal_kv_get(KEY, namespace=NAMESPACE))
print(json.dumps(metadata))
gcs.internal_kv_put(KEY, json.dumps({**metadata, "python_version": sys.argv[2]}).encode(), True, namespace=NAMESPACE)
"""


def set_cluster_python_version(ray_head: RayHead, version: str) -> dict:
    """Rewrite the Python version the cluster recorded in its GCS; return the metadata as it was.
    (A subprocess: Ray's C++ client reads its auth token from the environment once per process.)"""
    done = subprocess.run(
        [sys.executable, "-c", _SET_PYTHON_VERSION, ray_head.address, version],
        capture_output=True, text=True, timeout=60, check=True, env={**os.environ, **ray_head.client_env},
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_version_mismatch_is_one_clear_sentence(planted, ray_head: RayHead) -> None:
    """The cluster says it runs another Python, as a cluster built from another image would."""
    dsn, _ = planted
    original = set_cluster_python_version(ray_head, "3.99.0")
    try:
        result = cli(
            "run", "topography", "--query", QUERY, "--run-id", "mismatch", "--address", ray_head.address,
            env={"OFFLOAD_DSN": dsn, **ray_head.client_env},
        )  # fmt: skip
    finally:
        set_cluster_python_version(ray_head, original["python_version"])
    altered = {**original, "python_version": "3.99.0"}
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"runs Ray {altered['ray_version']} on Python 3.99.0" in errors[0]
    assert (
        f"this client runs Ray {altered['ray_version']} on Python {'.'.join(map(str, sys.version_info[:3]))}"
        in (errors[0])
    )
    assert points(dsn, "mismatch") == []


# Bad input: each case is a table `e` and a query; the error names the row, nothing is written.
BAD_INPUTS = {
    "no rows": ("CREATE TABLE e (id int, embedding real[])", QUERY.replace("docs", "e"), "the query returned no rows"),
    "mixed dimensions": (
        "CREATE TABLE e AS SELECT * FROM (VALUES (1, '{1,2,3}'::real[]), (2, '{1,2,3,4}'::real[])) v(id, embedding)",
        "SELECT id, embedding FROM e ORDER BY id",
        "row 2 (id 2): embedding has 4 dimensions, the rows before it have 3",
    ),
    "NaN": (
        "CREATE TABLE e AS SELECT * FROM (VALUES (1, '{1,2}'::real[]), (2, '{NaN,1}'::real[])) v(id, embedding)",
        "SELECT id, embedding FROM e ORDER BY id",
        "row 2 (id 2): embedding has NaN or infinite values",
    ),
    "infinity": (
        "CREATE TABLE e AS SELECT * FROM (VALUES (7, '{1,-Infinity}'::real[])) v(id, embedding)",
        "SELECT id, embedding FROM e",
        "row 1 (id 7): embedding has NaN or infinite values",
    ),
    "NULL embedding": (
        "CREATE TABLE e AS SELECT * FROM (VALUES (1, '{1,2}'::real[]), (2, NULL)) v(id, embedding)",
        "SELECT id, embedding FROM e ORDER BY id",
        "row 2 (id 2): embedding is NULL",
    ),
    "NULL element": (
        "CREATE TABLE e AS SELECT * FROM (VALUES (1, '{1,NULL}'::real[])) v(id, embedding)",
        "SELECT id, embedding FROM e",
        "row 1: embedding contains NULL elements",
    ),
    "no embedding column": (
        "CREATE TABLE e (id int, vec real[])",
        "SELECT id, vec FROM e",
        "the query returns no `embedding` column (it returns: id, vec)",
    ),
    "wrong embedding type": (
        "CREATE TABLE e (id int, embedding int)",
        "SELECT id, embedding FROM e",
        "column `embedding` has type integer",
    ),
    "query error": ("CREATE TABLE e (id int)", "SELECT id, embedding FROM missing_table", 'relation "missing_table"'),
    "duplicate id": (
        "CREATE TABLE e AS SELECT 1 AS id, '{1,2}'::real[] AS embedding FROM generate_series(1, 6)",
        "SELECT id, embedding FROM e",
        "row 2: id 1 appears more than once",
    ),
    "too few rows": (
        "CREATE TABLE e AS SELECT g AS id, ARRAY[g, 1]::real[] AS embedding FROM generate_series(1, 3) g",
        "SELECT id, embedding FROM e",
        "the query returned 3 rows; UMAP needs at least 5",
    ),
}


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    yield new_database(postgres_server)


def seed_earlier_run(dsn: str, run_id: str) -> None:
    """An earlier good result for `run_id`, which a bad re-run must leave exactly as it was."""
    with psycopg.connect(dsn) as conn:
        write_run(
            conn, results_table="topography_points", runs_table="topography_points_runs", run_id=run_id,
            id_type="integer", ids=[100, 101], coordinates=np.array([[0.5, 1.5], [2.5, 3.5]], dtype=np.float32),
            labels=np.array([0, -1]), probabilities=np.array([0.75, 0.0]),
            record={"rows": 2, "dimensions": 2, "clusters": 1, "noise_fraction": 0.5, "device": "cpu",
                    "params": {}, "timings": {}, "versions": {}, "resources": {}},
        )  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_by_name_and_nothing_is_written(database: str, case: str) -> None:
    setup, query, message = BAD_INPUTS[case]
    with psycopg.connect(database) as conn:
        conn.execute(setup)
    seed_earlier_run(database, "again")
    before = (points(database, "again"), run_records(database, "again"))
    with pytest.raises(EmbeddingInputError) as refused:
        run_topography(TopographyParams(dsn=database, query=query, run_id="again"))
    assert message in str(refused.value)
    assert (points(database, "again"), run_records(database, "again")) == before


def test_the_command_line_reports_bad_input_from_a_local_cluster(database: str, tmp_path) -> None:
    """No --address: a local Ray cluster; the task's refusal reaches the user as one error line.

    HOME is a temp dir: a local cluster writes ~/.ray/auth_token, which later `ray start`s would pick up.
    """
    with psycopg.connect(database) as conn:
        conn.execute(BAD_INPUTS["NaN"][0])
    result = cli(
        "run", "topography", "--query", BAD_INPUTS["NaN"][1], "--run-id", "local",
        env={"OFFLOAD_DSN": database, "HOME": str(tmp_path), "RAY_AUTH_MODE": "", "RAY_AUTH_TOKEN": ""},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: row 2 (id 2): embedding has NaN or infinite values; nothing was written for run 'local'" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {"OFFLOAD_DSN": ""}, "no Postgres DSN: pass --dsn or set $OFFLOAD_DSN"),
        (["--dsn", "postgresql://x", "--results-table", "points; drop"], {}, "is not a plain Postgres name"),
        (["--dsn", "postgresql://x", "--n-neighbors", "1"], {}, "n_neighbors"),
    ],
)
def test_bad_arguments_exit_2_before_any_cluster_is_touched(args: list[str], env: dict, message: str) -> None:
    result = cli("run", "topography", "--query", QUERY, "--run-id", "r", *args, env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_every_accepted_embedding_form_reads_into_one_float32_matrix(database: str) -> None:
    """real[], double precision[], numeric[] and pgvector's text form; more rows than one block."""
    rows = BLOCK_ROWS * 2 + 5
    expected = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) / 8  # exact in float32 and in text
    with psycopg.connect(database) as conn:
        conn.execute("CREATE TABLE forms (id text, r real[], d double precision[], n numeric[], t text)")
        with conn.cursor().copy("COPY forms FROM STDIN") as copy:
            for i, vector in enumerate(expected.tolist()):
                text = ",".join(map(str, vector))
                copy.write_row((f"doc-{i:05d}", f"{{{text}}}", f"{{{text}}}", f"{{{text}}}", f"[{text}]"))
        conn.commit()
        for column in ("r", "d", "n", "t"):
            read = read_embeddings(conn, f"SELECT id, {column} AS embedding FROM forms ORDER BY id;")
            assert read.id_type == "text" and read.ids[0] == "doc-00000" and len(read.ids) == rows
            assert read.vectors.dtype == np.float32 and read.vectors.flags.c_contiguous
            np.testing.assert_array_equal(read.vectors, expected, err_msg=column)


def test_the_jobs_api_refuses_a_caller_without_the_token(ray_head: RayHead) -> None:
    for headers, status in (({}, 401), ({"Authorization": "Bearer not-the-token"}, 403)):
        assert httpx.get(f"{ray_head.jobs_url}/api/jobs/", headers=headers, timeout=10).status_code == status
        refused = httpx.post(
            f"{ray_head.jobs_url}/api/jobs/", json={"entrypoint": "touch /tmp/pwned"}, headers=headers, timeout=10
        )
        assert refused.status_code == status, refused.text
    ok = httpx.get(f"{ray_head.jobs_url}/api/jobs/", headers={"Authorization": f"Bearer {ray_head.token}"}, timeout=10)
    assert ok.status_code == 200


def test_submit_refuses_to_send_a_dsn_in_the_jobs_visible_description(ray_head: RayHead) -> None:
    result = cli(
        "submit", "topography", "--address", ray_head.jobs_url, "--query", QUERY, "--run-id", "x",
        "--dsn", "postgresql://u:pw-secret@db/x", env=ray_head.client_env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "the cluster's $OFFLOAD_DSN" in result.stderr and "pw-secret" not in result.stderr


def test_run_refuses_a_password_on_its_command_line(ray_head: RayHead) -> None:
    """Ray shows each driver's command line in the dashboard's job list (and `ps` shows it to every user)."""
    for dsn in ("postgresql://u:pw-secret@db/x", "host=db user=u password=pw-secret dbname=x"):
        result = cli("run", "topography", "--dsn", dsn, "--query", QUERY, "--run-id", "x", env=ray_head.client_env)
        assert result.returncode == 2
        assert "--dsn holds a password" in result.stderr and "$OFFLOAD_DSN" in result.stderr
        assert "pw-secret" not in result.stderr
