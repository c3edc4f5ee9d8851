"""The whole runtime on one machine without Docker or a GPU (demos, tests, benchmarks)."""
