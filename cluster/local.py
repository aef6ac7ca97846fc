"""``faceveil cluster local``: a multi-node Ray cluster on this machine, to try the cluster path.

The head node has CPUs only; each worker node has CPUs and (by default) one simulated GPU, as on
a real GPU cluster. Ray schedules actors by those GPUs, but this machine may have none, so the
cluster's processes get FACEVEIL_ALLOW_FAKE_GPU=1 and the actors run inference on CPU. Ray keeps
its files in its usual temp folder (RAY_TMPDIR, default /tmp/ray).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from faceveil.jobs.raypool import FAKE_GPU_ENV

log = logging.getLogger(__name__)


def start_local_cluster(nodes: int = 3, cpus_per_node: int = 2, gpus_per_node: int = 1):
    """A ``ray.cluster_utils.Cluster``: one CPU head plus ``nodes - 1`` worker nodes with
    ``cpus_per_node`` CPUs and ``gpus_per_node`` simulated GPUs each. Caller shuts it down."""
    if nodes < 2:
        raise ValueError("--nodes must be at least 2 (a head and one worker node)")
    if cpus_per_node < 1 or gpus_per_node < 0:
        raise ValueError("--cpus-per-node must be at least 1 and --gpus-per-node at least 0")
    from ray.cluster_utils import Cluster

    if gpus_per_node:
        os.environ[FAKE_GPU_ENV] = "1"  # inherited by every raylet and worker started below
    head = {"num_cpus": cpus_per_node, "num_gpus": 0, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node, num_gpus=gpus_per_node)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def _serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = start_local_cluster(args.nodes, args.cpus_per_node, args.gpus_per_node)
    try:
        workers = args.nodes - 1
        print(f"local Ray cluster: 1 head ({args.cpus_per_node} CPUs) + {workers} worker nodes "
              f"({args.cpus_per_node} CPUs, {args.gpus_per_node} simulated GPUs each)")  # fmt: skip
        print(f"address: {cluster.address}")
        print(f"try: faceveil run IN OUT --no-escrow --address {cluster.address} "
              f"--gpus-per-actor {1 if args.gpus_per_node else 0}")  # fmt: skip
        print("Ctrl-C stops the cluster", flush=True)
        stop.wait()
    finally:
        cluster.shutdown()
        log.info("local cluster stopped")
    return 0


def add_cluster_command(subparsers) -> None:
    """``faceveil cluster local [--nodes N] [--cpus-per-node C] [--gpus-per-node G]``."""
    cluster = subparsers.add_parser("cluster", help="Ray cluster helpers")
    sub = cluster.add_subparsers(dest="cluster_command", required=True)
    local = sub.add_parser("local", help="start a multi-node Ray cluster on this machine "
                           "(simulated GPUs) and keep it up until Ctrl-C")  # fmt: skip
    local.add_argument("--nodes", type=int, default=3, help="nodes in all, the head included")
    local.add_argument("--cpus-per-node", type=int, default=2)
    local.add_argument("--gpus-per-node", type=int, default=1,
                       help="simulated GPUs per worker node (inference runs on CPU)")  # fmt: skip
    local.set_defaults(handler=_serve)
