"""vllm-gb10 runtime: the code the platform's services run (batch, kvcache, offload)."""
