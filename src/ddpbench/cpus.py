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


def core_block(index: int, size: int) -> list[int]:
    """The ``index``-th block of ``size`` cores among those this process may use."""
    return sorted(os.sched_getaffinity(0))[index * size : (index + 1) * size]


def may_pin(fits: bool, whole_machine: bool) -> bool:
    """Whether to give each rank (or each agent) its own block of cores, when the blocks ``fit`` in
    the cores this process may use.

    Unpinned ranks migrate between cores and evict each other's caches. But blocks are counted
    from the first allowed core, so two launches sharing a machine would pin onto the same
    cores: pin only when told the machine is ours (DDPBENCH_PIN=1, which the workflow sets
    while timed runs go one at a time) or, unless DDPBENCH_PIN=0, when the launch uses the
    ``whole_machine`` it may see (a scheduler confined it to exactly the cores it uses)."""
    setting = os.environ.get("DDPBENCH_PIN", "")
    return fits and setting != "0" and (setting == "1" or whole_machine)
