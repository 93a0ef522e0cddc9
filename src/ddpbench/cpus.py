"""The CPUs a process may use. No torch here: the launchers import it."""

from __future__ import annotations

import os


def cores_available() -> int:
    """The CPUs this process may run on (a scheduler's binding included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def job_cpus(cores: int) -> int:
    """The CPUs this job may use on this node: what the workflow granted it (DDPBENCH_JOB_CPUS,
    Snakemake's threads for the job), within the ``cores`` a scheduler's binding lets it see."""
    granted = os.environ.get("DDPBENCH_JOB_CPUS", "")
    return min(cores, int(granted)) if granted.isdigit() and int(granted) > 0 else cores
