"""A process's own peak memory, for the run record and the benchmark.

No heavy imports here: the benchmark loads this into the processes it measures.
"""

from __future__ import annotations

import resource


def peak_rss_bytes() -> int:
    """This process's own peak resident memory.

    VmHWM, not ru_maxrss: Linux carries a parent's peak across fork+exec into ru_maxrss.
    """
    try:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
