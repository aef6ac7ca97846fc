"""The cluster manifests agree with the real CLI: entrypoints parse, resources fit the flags."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import yaml

from faceveil.jobs.cli import build_parser
from faceveil.jobs.raypool import size_pool
from faceveil.jobs.run_cli import job_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _run_args(command: str):
    """Parsed ``faceveil run`` arguments of a shell command line, checked by the real parser."""
    argv = shlex.split(command)
    assert argv[0] == "faceveil", command
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    job_config(args)  # the config validates itself (pool sizes, batch size)
    return args


def _quantity(value) -> float:
    """A Kubernetes CPU quantity: 8, "8", "500m"."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _per_node(args, cpus: float, gpus: float) -> int:
    """How many actors of ``args`` one node with ``cpus`` and ``gpus`` holds."""
    fit = math.floor(cpus / args.cpus_per_actor)
    if args.gpus_per_actor:
        fit = min(fit, math.floor(gpus / args.gpus_per_actor))
    return fit


def _readme_commands() -> list[str]:
    """Every ``faceveil ...`` command in cluster/README.md's code blocks (after ``--`` for
    ``ray job submit``), with line continuations joined."""
    text = (CLUSTER / "README.md").read_text()
    code = "\n".join(re.findall(r"```\n(.*?)```", text, flags=re.S)).replace("\\\n", " ")
    found = []
    for line in map(str.strip, code.splitlines()):
        if line.startswith("ray job submit") and " -- faceveil " in line:
            found.append(line.split(" -- ", 1)[1])
        elif line.startswith("faceveil "):
            found.append(line)
    assert found
    return found


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _load("k8s/rayjob.yaml")


def test_rayjob_is_one_off_and_cleans_up(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    assert _run_args(spec["entrypoint"]).resume, "retries must continue, not restart, the job"


def test_raycluster_and_rayjob_describe_the_same_cluster(rayjob):
    raycluster = _load("k8s/raycluster.yaml")
    assert raycluster["kind"] == "RayCluster"
    assert raycluster["spec"] == rayjob["spec"]["rayClusterSpec"]


def test_entrypoint_matches_the_worker_resources(rayjob):
    args = _run_args(rayjob["spec"]["entrypoint"])
    assert args.input.startswith("s3://") and args.output.startswith("s3://")
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "actors must not land on the head"
    head_limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits
    (group,) = cluster["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    for kind in ("requests", "limits"):
        gpus = worker["resources"][kind]["nvidia.com/gpu"]
        assert gpus == args.gpus_per_actor == 1
    cpus = _quantity(worker["resources"]["limits"]["cpu"])
    assert _quantity(worker["resources"]["requests"]["cpu"]) == cpus >= args.cpus_per_actor
    per_node = _per_node(args, cpus, gpus)
    assert per_node >= 1
    assert args.num_actors <= group["replicas"] * per_node
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    resources = {"CPU": group["replicas"] * cpus, "GPU": group["replicas"] * gpus}
    assert size_pool(job_config(args).pool, resources) == args.num_actors


def test_head_holds_the_files_the_entrypoint_names(rayjob):
    """The driver runs on the head: the secret and custodian keys must be mounted there."""
    args = _run_args(rayjob["spec"]["entrypoint"])
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = [m["mountPath"] for m in head["containers"][0]["volumeMounts"]]
    for path in [args.secret_file, *args.custodians]:
        assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), path
    assert args.threshold <= len(args.custodians)


def test_one_image_everywhere_with_the_clusters_ray_version(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    images = {c["image"] for p in pods for c in p["template"]["spec"]["containers"]}
    launcher = _load("ray-cluster-aws.yaml")
    assert images == {launcher["docker"]["image"]} and "faceveil" in images.pop()
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    (version,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, flags=re.M)
    assert cluster["rayVersion"] == version


def test_dockerfile_installs_torch_before_the_package():
    steps = (CLUSTER / "Dockerfile").read_text().split("\nRUN ")[1:]
    torch = next(i for i, s in enumerate(steps) if "pip install --no-cache-dir torch" in s)
    package = next(i for i, s in enumerate(steps) if "pip install --no-cache-dir . " in s)
    assert torch < package
    assert "onnxruntime-gpu" in steps[package]


def test_launcher_gpu_workers_fit_the_documented_command():
    launcher = _load("ray-cluster-aws.yaml")
    nodes = launcher["available_node_types"]
    assert nodes[launcher["head_node_type"]]["resources"] == {"CPU": 0}
    (worker,) = [n for name, n in nodes.items() if name != launcher["head_node_type"]]
    assert worker["resources"]["GPU"] >= 1
    (command,) = [c for c in _readme_commands() if "run-003" in c]
    args = _run_args(command)
    per_node = _per_node(args, worker["resources"]["CPU"], worker["resources"]["GPU"])
    assert per_node >= 1
    assert args.num_actors <= worker["max_workers"] * per_node
    assert worker["max_workers"] <= launcher["max_workers"]


def test_every_command_in_the_readme_parses():
    parser = build_parser()
    for command in _readme_commands():
        args = parser.parse_args(shlex.split(command)[1:])
        if args.command == "run":
            job_config(args)


RAY_SECURITY_ENV = {
    "RAY_USE_TLS": "1",
    "RAY_TLS_SERVER_CERT": "tls.crt",
    "RAY_TLS_SERVER_KEY": "tls.key",
    "RAY_TLS_CA_CERT": "ca.crt",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN_PATH": "token",
}


def _check_security_env(env: dict[str, str], mounts: list[str]) -> None:
    """TLS and token auth are on, and every file they name lies under a mounted folder."""
    for name, want in RAY_SECURITY_ENV.items():
        assert name in env, name
        if name in ("RAY_USE_TLS", "RAY_AUTH_MODE"):
            assert env[name] == want, name
        else:
            assert env[name].endswith("/" + want), name
            assert any(env[name].startswith(m.rstrip("/") + "/") for m in mounts), env[name]


@pytest.mark.parametrize("name", ["k8s/raycluster.yaml", "k8s/rayjob.yaml"])
def test_every_ray_container_runs_with_tls_and_token_auth(name):
    doc = _load(name)
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        spec = pod["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (tls_init,) = [c for c in spec["initContainers"] if c["name"] == "ray-tls"]
        assert {m["name"] for m in tls_init["volumeMounts"]} == {"ray-ca", "ray-tls"}
        for container in spec["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            mounts = [m["mountPath"] for m in container["volumeMounts"]]
            _check_security_env(env, mounts)
            names = {m["name"] for m in container["volumeMounts"]}
            assert "ray-ca" not in names, "the CA key stays in the init container"
            assert volumes["ray-auth"]["secret"]["secretName"]


def test_launcher_nodes_run_with_tls_and_token_auth():
    launcher = _load("ray-cluster-aws.yaml")
    options = launcher["docker"]["run_options"]
    env = dict(o.removeprefix("--env ").split("=", 1) for o in options if o.startswith("--env "))
    generated = "/home/ray/tls"  # made on every node by setup_commands
    assert any(f"mkdir -p {generated}" in c for c in launcher["setup_commands"])
    _check_security_env(env, [*launcher["file_mounts"], generated])
    assert not launcher["docker"].get("head_run_options"), "options must reach every node"
