"""Starting or joining Ray, and sizing the actor pool from what the cluster really has."""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray

from faceveil.anon_core.pipeline import AnonConfig
from faceveil.jobs.config import PoolConfig
from faceveil.jobs.datawriter import OutputSpec
from faceveil.jobs.worker import ShardTask

log = logging.getLogger(__name__)

DEFAULT_TMP = "/tmp/faceveil-ray"
CLUSTER_WAIT_ENV = "FACEVEIL_CLUSTER_WAIT_S"
DEFAULT_CLUSTER_WAIT_S = 600.0


class ClusterError(RuntimeError):
    """The cluster cannot run the pool asked for (no GPUs, too few CPUs)."""


def connect(address: str | None) -> bool:
    """Join ``address`` (or RAY_ADDRESS) or start a local Ray; True when we started it.

    A local Ray keeps its temp files and logs under FACEVEIL_RAY_TMPDIR (default
    /tmp/faceveil-ray), never in the working directory. Ray's own console lines are off unless
    faceveil logs at DEBUG (``--verbose``): see :func:`quiet_ray`.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    verbose = log.isEnabledFor(logging.DEBUG)
    options = {"include_dashboard": False, **quiet_ray(verbose)}
    if address:
        options["address"] = address
    else:
        options["_temp_dir"] = os.environ.get("FACEVEIL_RAY_TMPDIR", DEFAULT_TMP)
    if verbose:
        ray.init(**options)
        return address is None
    with _without_stderr_lines(RAY_LEVEL_NOTICE):
        ray.init(**options)
    importlib.import_module("ray.data")  # importing it configures its logger: quiet it after
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return address is None


# What Ray's C++ core prints once, whatever the level, when RAY_BACKEND_LOG_LEVEL is set.
RAY_LEVEL_NOTICE = re.compile(rb"\] logging\.cc:\d+: Set ray log level from environment variable")


def quiet_ray(verbose: bool) -> dict:
    """``ray.init`` options that keep Ray's own lines off the console unless ``verbose``.

    Quiet: the driver's ``ray`` loggers show errors only (the auth-token notice is a warning),
    Ray's C++ core logs fatal errors only (each Ray Data actor pool otherwise prints an E-level
    line about constructor arguments in the object store, which is how Ray Data always builds
    its actors), and workers' output is not copied to the driver's console (their logs stay in
    the session folder). ``ray.data``'s notices ("progress bars disabled", "execution
    finished") are set to errors once Ray Data is imported. A RAY_BACKEND_LOG_LEVEL the user
    set is kept.
    """
    if verbose:
        return {"logging_level": logging.INFO}
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    return {"logging_level": logging.ERROR, "log_to_driver": False}


@contextmanager
def _without_stderr_lines(pattern: re.Pattern) -> Iterator[None]:
    """Holds what this process writes to file descriptor 2 inside the block (Ray's C++ core
    writes there directly) and passes it on afterwards, less the lines that match
    ``pattern``; on an error too."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(True) if not pattern.search(line)]
            if kept:
                os.write(2, b"".join(kept))


def wait_for_resources(pool: PoolConfig, joined: bool) -> dict[str, float]:
    """The cluster's resources, for ``size_pool``.

    On a cluster we joined (``joined``) that lacks room for the pool (``num_actors`` actors, or
    one when unset), ask its autoscaler for the actors' resources and wait up to
    FACEVEIL_CLUSTER_WAIT_S seconds (default 600) for nodes to join: on KubeRay a job starts as
    soon as the head is up, often before the GPU workers have pulled their image. The request
    is withdrawn once the wait ends; the actors created next keep their nodes busy.
    """
    resources = ray.cluster_resources()
    wait_s = float(os.environ.get(CLUSTER_WAIT_ENV, DEFAULT_CLUSTER_WAIT_S)) if joined else 0.0
    if _fits(pool, resources) or wait_s <= 0:
        return resources
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": pool.cpus_per_actor, "GPU": pool.gpus_per_actor}
    request_resources(bundles=[{k: v for k, v in bundle.items() if v}] * (pool.num_actors or 1))
    deadline = time.monotonic() + wait_s
    try:
        while not _fits(pool, resources) and (left := deadline - time.monotonic()) > 0:
            log.info("waiting up to %.0f s for nodes: the cluster has %g CPUs and %g GPUs",
                     left, resources.get("CPU", 0.0), resources.get("GPU", 0.0))  # fmt: skip
            time.sleep(min(5.0, left))
            resources = ray.cluster_resources()
    finally:
        request_resources(bundles=[])
    return resources


def _fits(pool: PoolConfig, resources: dict[str, float]) -> bool:
    actors = pool.num_actors or 1
    return (resources.get("CPU", 0.0) >= actors * pool.cpus_per_actor
            and resources.get("GPU", 0.0) >= actors * pool.gpus_per_actor)  # fmt: skip


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


FAKE_GPU_ENV = "FACEVEIL_ALLOW_FAKE_GPU"


def actor_device(requested: str) -> str:
    """The device an actor really runs inference on, given the one the driver asked for.

    'cuda' needs onnxruntime's CUDAExecutionProvider in the actor. Without it the actor fails
    with ClusterError instead of quietly running on CPU, unless FACEVEIL_ALLOW_FAKE_GPU=1: then
    the GPU that Ray scheduled the actor on is taken as a simulated one (``ray.cluster_utils``,
    ``faceveil cluster local``, tests) and inference runs on CPU, with a warning.
    """
    if requested != "cuda":
        return requested
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return "cuda"
    if os.environ.get(FAKE_GPU_ENV) == "1":
        log.warning("no CUDA in this actor and %s=1: its GPU is simulated, inference runs on CPU",
                    FAKE_GPU_ENV)  # fmt: skip
        return "cpu"
    raise ClusterError(
        "this actor was given a GPU but onnxruntime has no CUDAExecutionProvider here; install "
        f"onnxruntime-gpu on the workers, run with --gpus-per-actor 0, or set {FAKE_GPU_ENV}=1 "
        "on a simulated cluster whose GPUs are fake"
    )


TASK_COLUMNS = ("shard", "uri", "samples", "sha256")


@dataclass(frozen=True)
class ActorSpec:
    """A pool of Ray Data actors for ``map_over_shards``: ``size`` instances, each holding
    ``pool``'s CPUs and GPUs and built from this spec, its one constructor argument.

    Every actor runs ``anon`` (device and threads chosen by the driver), fetches the Secrets from
    ``key_holder`` and reports progress to ``counter`` (None: no progress). Second-pass actors
    (``ShardProcessor``) publish into ``out_uri``, feed ``observer`` (the in-job audit sampler)
    and, with the surrogate, build it from ``surrogate_context``; first-pass actors
    (``FaceCollector``) keep up to ``max_donor_faces`` donor candidates. ``output`` says how
    second-pass actors write ``data/``. ``face_records`` (a ``firstpass.RecordShelf``, or None)
    is where the surrogate's first pass leaves each shard's face work for its second pass.
    """

    anon: AnonConfig
    key_holder: object
    pool: PoolConfig
    size: int = 1
    counter: object = None
    out_uri: str = ""
    observer: object = None
    surrogate_context: object = None
    max_donor_faces: int = 1024
    output: OutputSpec = OutputSpec()
    face_records: object = None


def map_over_shards(tasks: list[ShardTask], actor: type, spec: ActorSpec) -> ray.data.Dataset:
    """Ray Data over ``tasks``, one shard per row and block, mapped by the pool ``spec`` of
    ``actor`` instances."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    items = [{k: getattr(t, k) for k in TASK_COLUMNS} for t in tasks]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(
        actor,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=spec.size),
        num_cpus=spec.pool.cpus_per_actor,
        num_gpus=spec.pool.gpus_per_actor or None,
        fn_constructor_args=(spec,),
    )


def shard_tasks(batch: dict) -> list[ShardTask]:
    """The ShardTasks in one batch of a ``map_over_shards`` dataset."""
    return [ShardTask(*t) for t in zip(*(batch[k] for k in TASK_COLUMNS), strict=True)]
