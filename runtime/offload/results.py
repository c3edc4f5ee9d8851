"""Write a run's points and its run record to Postgres in one transaction, replacing that run id.

Concurrent writers of the same run id are serialised by a transaction-level advisory lock, so
a re-run replaces the earlier rows and never adds to them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

_RESULTS_DDL = """
CREATE TABLE IF NOT EXISTS {results} (
    run_id text NOT NULL,
    id {id_type} NOT NULL,
    x real NOT NULL,
    y real NOT NULL,
    cluster integer NOT NULL,
    probability real NOT NULL,
    PRIMARY KEY (run_id, id)
)"""
_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS {runs} (
    run_id text PRIMARY KEY,
    finished_at timestamptz NOT NULL DEFAULT now(),
    rows integer NOT NULL,
    dimensions integer NOT NULL,
    clusters integer NOT NULL,
    noise_fraction real NOT NULL,
    device text NOT NULL,
    params jsonb NOT NULL,
    timings jsonb NOT NULL,
    versions jsonb NOT NULL,
    resources jsonb NOT NULL
)"""


def _table(name: str) -> sql.Composable:
    return sql.Identifier(*name.split("."))


def first_duplicate(ids: Sequence[Any]) -> tuple[int, Any] | None:
    """(row number, id) of the first id seen twice, or None."""
    seen = set()
    for row_number, row_id in enumerate(ids, start=1):
        if row_id in seen:
            return row_number, row_id
        seen.add(row_id)
    return None


def write_run(
    conn: psycopg.Connection,
    *,
    results_table: str,
    runs_table: str,
    run_id: str,
    id_type: str,
    ids: Sequence[Any],
    coordinates: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    record: dict[str, Any],
) -> None:
    results, runs = _table(results_table), _table(runs_table)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{results_table}:{run_id}",))
        conn.execute(sql.SQL(_RESULTS_DDL).format(results=results, id_type=sql.SQL(id_type)))
        conn.execute(sql.SQL(_RUNS_DDL).format(runs=runs))
        conn.execute(sql.SQL("DELETE FROM {} WHERE run_id = %s").format(results), (run_id,))
        with conn.cursor().copy(
            sql.SQL("COPY {} (run_id, id, x, y, cluster, probability) FROM STDIN").format(results)
        ) as copy:
            for row_id, (x, y), label, probability in zip(
                ids, coordinates.tolist(), labels.tolist(), probabilities.tolist(), strict=True
            ):
                copy.write_row((run_id, row_id, x, y, label, probability))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (run_id, rows, dimensions, clusters, noise_fraction, device, params, timings, "
                "versions, resources) VALUES (%(run_id)s, %(rows)s, %(dimensions)s, %(clusters)s, "
                "%(noise_fraction)s, %(device)s, %(params)s, %(timings)s, %(versions)s, %(resources)s) "
                "ON CONFLICT (run_id) DO UPDATE SET finished_at = now(), rows = EXCLUDED.rows, "
                "dimensions = EXCLUDED.dimensions, clusters = EXCLUDED.clusters, "
                "noise_fraction = EXCLUDED.noise_fraction, device = EXCLUDED.device, params = EXCLUDED.params, "
                "timings = EXCLUDED.timings, versions = EXCLUDED.versions, resources = EXCLUDED.resources"
            ).format(runs),
            {
                **{k: record[k] for k in ("rows", "dimensions", "clusters", "noise_fraction", "device")},
                "run_id": run_id,
                **{k: json.dumps(record[k]) for k in ("params", "timings", "versions", "resources")},
            },
        )
