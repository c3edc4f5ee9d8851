"""vllm-gb10 infrastructure: the Pulumi program, its components and platforms, the offline plan."""
