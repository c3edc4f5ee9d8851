"""Ray offload tasks: heavy data-science work that must not run on a small orchestrator.

The seeds' topography job (UMAP then HDBSCAN over embeddings in Postgres, ADR-004) runs as a Ray
task on the GB10 node's cluster, reads and writes Postgres directly, and uses RAPIDS cuML on the
GPU when the node has both. `python -m runtime.offload --help` is the command line.

Nothing is imported here, so `runtime.offload.memory` stays light for the processes the
benchmark measures.
"""
