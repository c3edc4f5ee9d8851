"""The parameters of a topography run: validated once, stored with the run record."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runtime.offload.embeddings import normalise_query

# An unquoted Postgres identifier, optionally schema-qualified: the results table name is
# interpolated as an identifier, so anything else is refused up front.
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


class UmapParams(BaseModel):
    """UMAP settings; the same names and meanings in umap-learn and cuML."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_neighbors: int = Field(15, ge=2)
    min_dist: float = Field(0.1, ge=0.0)
    metric: Literal["cosine", "euclidean"] = "cosine"
    random_state: int | None = None  # set for reproducible runs (umap-learn then runs single-threaded)


class HdbscanParams(BaseModel):
    """HDBSCAN settings; the same names and meanings in the hdbscan package and cuML."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_cluster_size: int = Field(15, ge=2)
    min_samples: int | None = Field(None, ge=1)
    cluster_selection_method: Literal["eom", "leaf"] = "eom"


class TopographyParams(BaseModel):
    """One topography run: where the embeddings come from, where results go, how to reduce and cluster.

    The query must return a column `id` and a column `embedding` (real[], double precision[],
    pgvector's vector, or text in pgvector's '[1,2,3]' form).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    dsn: str = Field(repr=False, min_length=1)  # holds the password: never logged nor stored
    query: str = Field(min_length=1)
    run_id: str = Field(min_length=1, max_length=200)
    results_table: str = "topography_points"
    umap: UmapParams = UmapParams()
    hdbscan: HdbscanParams = HdbscanParams()
    use_gpu: Literal["auto", "never"] = "auto"

    @field_validator("query")
    @classmethod
    def _strip_terminator(cls, query: str) -> str:
        return normalise_query(query)

    @field_validator("results_table")
    @classmethod
    def _plain_identifier(cls, name: str) -> str:
        if not _TABLE_NAME.match(name):
            raise ValueError(
                f"results table {name!r} is not a plain Postgres name ([schema.]table: letters, digits, "
                "underscores, not starting with a digit)"
            )
        return name

    @property
    def runs_table(self) -> str:
        """The table of run records, beside the results table."""
        return f"{self.results_table}_runs"

    def stored(self) -> dict[str, Any]:
        """What goes into the run record: everything but the DSN."""
        return self.model_dump(exclude={"dsn"})
