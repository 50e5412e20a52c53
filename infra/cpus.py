"""How many CPUs this process may really use, and torch's intra-op threads set from it.

Ray starts an actor with ``OMP_NUM_THREADS`` = its (rounded-up) ``num_cpus``, so a 0.3-CPU
Serve replica runs torch on one thread although the node's cores sit idle; and torch counts
the host's cores inside a container whose cgroup quota allows fewer. Both are fixed here.
"""

from __future__ import annotations

import os
from pathlib import Path


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def set_torch_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads (process-wide) to ``threads``, 0 = :func:`available_cpus`.

    Returns the count now in effect.
    """
    import torch

    torch.set_num_threads(threads or available_cpus())
    return torch.get_num_threads()
