"""Read `(id, embedding)` rows from Postgres into one float32 matrix.

The rows stream through a binary COPY; a loader turns each `real[]` straight into a NumPy view
of its bytes, so there are no per-row Python lists of floats. Postgres casts the other accepted
forms (double precision[], pgvector's vector and its text form) to `real[]` on its side.
Every refusal names the row (1-based, in query order) and its id.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.adapt import Loader
from psycopg.pq import Format

FLOAT4_ARRAY_OID = 1021
BLOCK_ROWS = 1024  # rows per preallocated block while the row count is unknown
_ARRAY_HEADER = struct.Struct("!iiI")  # ndim, has-null flag, element type
_ARRAY_DIM = struct.Struct("!ii")  # length, lower bound
_FLOAT4_ELEMENTS = np.dtype([("length", ">i4"), ("value", ">f4")])

# How each accepted embedding type becomes real[] on the server.
_CASTS = {
    "real[]": "{}",
    "double precision[]": "{}::real[]",
    "numeric[]": "{}::real[]",
    "vector": "{}::real[]",
    "halfvec": "{}::real[]",
    "text": "translate({}, '[]', '{{}}')::real[]",
    "character varying": "translate({}, '[]', '{{}}')::real[]",
}


class EmbeddingInputError(ValueError):
    """The query or its rows cannot be used; the message says what and where."""


class _Float4ArrayLoader(Loader):
    """Binary real[] → 1-D big-endian float32 view; NULL elements and 2-D arrays are refused."""

    format = Format.BINARY

    def load(self, data: Any) -> np.ndarray:
        buffer = memoryview(data)
        ndim, has_null, _ = _ARRAY_HEADER.unpack_from(buffer)
        if ndim == 0:
            return np.empty(0, dtype=np.float32)
        if ndim != 1:
            raise EmbeddingInputError(f"embedding is a {ndim}-dimensional array; expected a flat vector")
        if has_null:
            raise EmbeddingInputError("embedding contains NULL elements")
        (length, _) = _ARRAY_DIM.unpack_from(buffer, _ARRAY_HEADER.size)
        offset = _ARRAY_HEADER.size + _ARRAY_DIM.size
        return np.frombuffer(buffer, dtype=_FLOAT4_ELEMENTS, count=length, offset=offset)["value"]


@dataclass(frozen=True)
class Embeddings:
    ids: list[Any]
    id_type: str  # the Postgres type of the id column, for the results table
    vectors: np.ndarray  # (rows, dimensions) float32, C-contiguous

    @property
    def shape(self) -> tuple[int, int]:
        return self.vectors.shape


def normalise_query(query: str) -> str:
    """The query as a subquery can hold it: no surrounding space, no trailing semicolons."""
    stripped = query.strip().rstrip(";").strip()
    if not stripped:
        raise EmbeddingInputError("the query is empty")
    return stripped


def describe(conn: psycopg.Connection, query: str) -> tuple[str, str]:
    """The Postgres types of the query's `id` and `embedding` columns, without running it fully."""
    query = normalise_query(query)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(query)))
            columns = {c.name: c.type_code for c in cur.description or []}
            names = ", ".join(columns) or "none"
            for required in ("id", "embedding"):
                if required not in columns:
                    raise EmbeddingInputError(
                        f"the query returns no `{required}` column (it returns: {names}); "
                        "select your columns AS id and AS embedding"
                    )
            cur.execute("SELECT format_type(%s, NULL), format_type(%s, NULL)", (columns["id"], columns["embedding"]))
            types = cur.fetchone()
            assert types is not None  # SELECT of two expressions: one row
            id_type, embedding_type = types
    except psycopg.Error as error:
        raise EmbeddingInputError(f"the query failed in Postgres: {error}".strip()) from error
    finally:
        conn.rollback()  # leave no transaction open, failed or not
    if embedding_type not in _CASTS:
        raise EmbeddingInputError(f"column `embedding` has type {embedding_type}; expected one of: {', '.join(_CASTS)}")
    return id_type, embedding_type


def read_embeddings(conn: psycopg.Connection, query: str) -> Embeddings:
    """Stream the query's rows into one float32 matrix; refuse empty, ragged or non-finite input."""
    query = normalise_query(query)
    id_type, embedding_type = describe(conn, query)
    cast = sql.SQL(_CASTS[embedding_type]).format(sql.SQL("q.embedding"))
    copy_sql = sql.SQL("COPY (SELECT q.id, {} FROM ({}) AS q) TO STDOUT (FORMAT BINARY)").format(cast, sql.SQL(query))
    ids: list[Any] = []
    blocks: list[np.ndarray] = []
    dimensions = 0
    try:
        with conn.cursor() as cur:
            cur.adapters.register_loader(FLOAT4_ARRAY_OID, _Float4ArrayLoader)
            with cur.copy(copy_sql) as copy:
                copy.set_types([id_type, "real[]"])
                for row_number, (row_id, vector) in _numbered_rows(copy):
                    if vector is None:
                        raise EmbeddingInputError(f"row {row_number} (id {row_id!r}): embedding is NULL")
                    if row_number == 1:
                        dimensions = len(vector)
                        if dimensions == 0:
                            raise EmbeddingInputError(f"row 1 (id {row_id!r}): embedding is empty")
                    elif len(vector) != dimensions:
                        raise EmbeddingInputError(
                            f"row {row_number} (id {row_id!r}): embedding has {len(vector)} dimensions, "
                            f"the rows before it have {dimensions}"
                        )
                    slot = (row_number - 1) % BLOCK_ROWS
                    if slot == 0:
                        blocks.append(np.empty((BLOCK_ROWS, dimensions), dtype=np.float32))
                    blocks[-1][slot] = vector
                    if not np.isfinite(blocks[-1][slot]).all():
                        raise EmbeddingInputError(
                            f"row {row_number} (id {row_id!r}): embedding has NaN or infinite values"
                        )
                    ids.append(row_id)
    except EmbeddingInputError:
        raise
    except psycopg.Error as error:
        raise EmbeddingInputError(f"reading the embeddings failed in Postgres: {error}".strip()) from error
    finally:
        conn.rollback()
    if not ids:
        raise EmbeddingInputError("the query returned no rows")
    return Embeddings(ids=ids, id_type=id_type, vectors=_join(blocks, len(ids)))


def _join(blocks: list[np.ndarray], rows: int) -> np.ndarray:
    """One matrix from the blocks at about 1× their memory, not the 2× of np.concatenate: the
    result's pages are only touched as each block is copied in, and each block is freed after."""
    vectors = np.empty((rows, blocks[0].shape[1]), dtype=np.float32)
    for index in range(len(blocks)):
        start = index * BLOCK_ROWS
        count = min(BLOCK_ROWS, rows - start)
        vectors[start : start + count] = blocks[index][:count]
        blocks[index] = None  # type: ignore[call-overload]  # released as we go
    return vectors


def _numbered_rows(copy: psycopg.Copy) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(row number, row) of a COPY; a loader's refusal gets the row number it happened at."""
    row_number = 0
    while True:
        row_number += 1
        try:
            row = copy.read_row()
        except EmbeddingInputError as error:
            raise EmbeddingInputError(f"row {row_number}: {error}") from None
        if row is None:
            return
        yield row_number, row
