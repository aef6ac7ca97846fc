"""Starting or joining Ray, and sizing the actor pool from what the cluster really has."""

from __future__ import annotations

import logging
import math
import os

import ray

from jobs.config import PoolConfig

log = logging.getLogger(__name__)

DEFAULT_TMP = "/tmp/faceveil-ray"


class ClusterError(RuntimeError):
    """The cluster cannot run the pool asked for (no GPUs, too few CPUs)."""


def connect(address: str | None) -> bool:
    """Join ``address`` (or RAY_ADDRESS) or start a local Ray; True when we started it.

    A local Ray keeps its temp files and logs under FACEVEIL_RAY_TMPDIR (default
    /tmp/faceveil-ray), never in the working directory.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    options = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **options)
        return False
    tmp = os.environ.get("FACEVEIL_RAY_TMPDIR", DEFAULT_TMP)
    ray.init(_temp_dir=tmp, **options)
    return True


def size_pool(pool: PoolConfig, resources: dict[str, float]) -> int:
    """How many actors to run; raises ClusterError instead of letting Ray wait forever.

    One CPU is left free when the cluster has more than one actor's worth, so Ray Data's own
    tasks can always run beside a full pool.
    """
    cpus = resources.get("CPU", 0.0)
    gpus = resources.get("GPU", 0.0)
    if pool.gpus_per_actor > 0 and gpus < pool.gpus_per_actor:
        raise ClusterError(
            f"each actor asks for {pool.gpus_per_actor:g} GPU but the cluster has {gpus:g} GPUs; "
            "run with --gpus-per-actor 0 or on a cluster with GPUs"
        )
    if cpus < pool.cpus_per_actor:
        raise ClusterError(
            f"each actor asks for {pool.cpus_per_actor:g} CPUs but the cluster has {cpus:g}"
        )
    spare = cpus - 1 if cpus - 1 >= pool.cpus_per_actor else cpus
    fit = math.floor(spare / pool.cpus_per_actor + 1e-9)
    if pool.gpus_per_actor > 0:
        fit = min(fit, math.floor(gpus / pool.gpus_per_actor + 1e-9))
    if pool.num_actors is None:
        return max(1, fit)
    if pool.num_actors * pool.cpus_per_actor > cpus or (
        pool.num_actors * pool.gpus_per_actor > gpus
    ):
        raise ClusterError(
            f"{pool.num_actors} actors x ({pool.cpus_per_actor:g} CPU, "
            f"{pool.gpus_per_actor:g} GPU) do not fit in the cluster's "
            f"{cpus:g} CPUs and {gpus:g} GPUs"
        )
    return pool.num_actors
