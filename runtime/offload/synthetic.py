"""Embeddings with planted clusters, loaded into Postgres fast: for the tests, bench and a demo."""

from __future__ import annotations

import numpy as np
import psycopg
from psycopg import sql

_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
FLOAT4_OID = 700


def planted_clusters(
    clusters: int, per_cluster: int, dimensions: int, *, spread: float = 1.0, separation: float = 12.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around random centres `separation` standard deviations apart: (vectors, true labels)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(clusters, dimensions))
    centres = separation * directions / np.linalg.norm(directions, axis=1, keepdims=True) * np.sqrt(dimensions) / 4
    labels = np.repeat(np.arange(clusters), per_cluster)
    vectors = centres[labels] + rng.normal(scale=spread, size=(len(labels), dimensions))
    order = rng.permutation(len(labels))
    return vectors[order].astype(np.float32), labels[order]


def _binary_rows(ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """Rows of (bigint, real[]) in Postgres's binary COPY format, built without a Python loop per value."""
    rows, dimensions = vectors.shape
    layout = np.dtype(
        [
            ("fields", ">i2"), ("id_length", ">i4"), ("id", ">i8"), ("array_length", ">i4"),
            ("ndim", ">i4"), ("has_null", ">i4"), ("element_type", ">u4"), ("dim", ">i4"), ("lower_bound", ">i4"),
            ("elements", [("length", ">i4"), ("value", ">f4")], (dimensions,)),
        ]
    )  # fmt: skip
    packed = np.empty(rows, dtype=layout)
    packed["fields"], packed["id_length"], packed["id"] = 2, 8, ids
    packed["array_length"] = 20 + 8 * dimensions
    packed["ndim"], packed["has_null"], packed["element_type"] = 1, 0, FLOAT4_OID
    packed["dim"], packed["lower_bound"] = dimensions, 1
    packed["elements"]["length"], packed["elements"]["value"] = 4, vectors
    return packed.tobytes()


def load_embeddings(conn: psycopg.Connection, table: str, vectors: np.ndarray, *, batch_rows: int = 1000) -> None:
    """(Re)create `table (id bigint primary key, embedding real[])` holding `vectors` with ids 0..n-1."""
    name = sql.Identifier(table)
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, embedding real[] NOT NULL)").format(name))
        with conn.cursor().copy(sql.SQL("COPY {} (id, embedding) FROM STDIN (FORMAT BINARY)").format(name)) as copy:
            copy.write(_COPY_SIGNATURE)
            for start in range(0, len(vectors), batch_rows):
                block = vectors[start : start + batch_rows]
                copy.write(_binary_rows(np.arange(start, start + len(block)), block))
            copy.write(_COPY_TRAILER)
