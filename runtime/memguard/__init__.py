"""The host memory guard: one per GPU host, `python -m runtime.memguard` (settings from MEMGUARD_*).

On a GB10 the CPU and GPU share one pool of memory, cgroup limits do not count CUDA allocations, and
running out of that pool freezes the whole box (no OOM kill). The guard watches the host's
MemAvailable and memory pressure (PSI) and acts before that: first it pauses (the batch workers on
its host stop claiming jobs), then it sheds (stops the lowest-priority containers of its own host's
compose project, in a configured order). Modules:
- decide.py: the pure state machine (levels, thresholds, hysteresis);
- source.py: reading /proc/meminfo and /proc/pressure/memory under a configurable root (or one cgroup's
  memory files, MEMGUARD_CGROUP);
- docker_api.py: stopping the configured containers through the Docker Engine API, nothing else;
- service.py: the loop, the Redis pause key, metrics and JSON log lines.
"""
