"""The whole runtime on one machine without Docker or a GPU, for demos, tests and benchmarks: real
servers on loopback. Outside the runtime package, so no image ships it."""
