"""The fine-tuned parrot on real lfw_dev faces and the real MobileFaceNet: its torch network
embeds as onnxruntime does, other graphs are refused by name, training its last block lowers
the margin loss and repeats exactly under one seed, and ``faceveil eval`` with
``--attacks parrot-finetune`` catches the identity method at the clear-image level and records
the layers and the budget in report.json."""

from __future__ import annotations

import argparse
import csv
import json

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from faceveil.anon_core.attackers import OnnxAttacker
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import align_112
from faceveil.anon_core.imageio import decode_image
from faceveil.jobs.evaluate import add_eval_command
from faceveil.jobs.evaluate.config import AttackBudget
from faceveil.jobs.evaluate.finetune import TailFinetune, trunk_activations
from faceveil.jobs.evaluate.recognizer import RecognizerNet, crops_tensor
from tests.factories import page_attack_cpu_s, shared_path

pytestmark = [pytest.mark.shared, pytest.mark.slow]

# MobileFaceNet's last inverted-residual block and every layer after it, as its graph names them
TAIL = [
    "features/features.14/conv/conv.0/conv.0.0 (1x1, 128->256)",
    "features/features.14/conv/conv.1/conv.1.0 (depthwise 3x3, 256->256)",
    "features/features.14/conv/conv.2 (1x1, 256->128)",
    "conv2/conv2.0 (1x1, 128->512)",
    "gdconv/depthwise (depthwise 7x7, 512->512)",
    "conv3 (1x1, 512->128)",
]


@pytest.fixture(scope="module")
def model():
    return shared_path("models", "mobilefacenet_128d.onnx")


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    """(112 x 112 ArcFace crops, identity per crop): the first 4 photos of 8 lfw_dev people
    with 4 or more, aligned at the central CenterFace detection."""
    root = shared_path("data", "lfw_dev")
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_person: dict[str, list[str]] = {}
    for row in rows:
        by_person.setdefault(row["identity"], []).append(row["path"])
    people = [p for p in sorted(by_person) if len(by_person[p]) >= 4][:8]
    detector = build_detector("centerface", None)
    crops, ids = [], []
    for number, person in enumerate(people):
        for path in by_person[person][:4]:
            image = decode_image((root / path).read_bytes()).rgb
            found = detector([image])[0]
            central = int(np.argmax(found.boxes[:, 4])) if len(found) else None
            assert central is not None, "every one of these lfw_dev photos has a face"
            crops.append(align_112(image, found.landmarks5[central]))
            ids.append(number)
    return np.stack(crops), np.array(ids)


def test_torch_network_embeds_as_onnxruntime_on_real_faces(model, faces) -> None:
    crops, _ = faces
    expected = OnnxAttacker(model).embedder.embed_crops(list(crops))
    net = RecognizerNet(model).eval()
    with torch.no_grad():
        x = crops_tensor(crops)
        whole = torch.nn.functional.normalize(net(x), dim=1).numpy()
        split = torch.nn.functional.normalize(net.tail(net.trunk(x)), dim=1).numpy()
    assert np.sum(whole * expected, axis=1).min() > 1 - 1e-4
    assert np.abs(split - whole).max() < 1e-6
    assert net.split_name == "/features/features.13/Add_output_0"
    assert net.tail_layers() == TAIL
    assert sum(p.numel() for p in net.tail_parameters()) == 225_792


def _graph(path, op: str, residual: bool) -> None:
    """A one-convolution ONNX graph followed by ``op`` (and a residual Add when asked)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], np.eye(3).ravel().tolist())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node(op, ["c"], ["y"])]  # fmt: skip
    if residual:
        nodes.append(helper.make_node("Add", ["x", "y"], ["z"]))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4]) for n in "xz"]
    if not residual:
        io[1] = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], [w])), str(path))


def test_graphs_with_other_operators_or_no_block_are_refused_by_name(tmp_path) -> None:
    _graph(tmp_path / "sigmoid.onnx", "Sigmoid", residual=True)
    with pytest.raises(ValueError, match=r"sigmoid.onnx: operators \['Sigmoid'\] cannot be"):
        RecognizerNet(tmp_path / "sigmoid.onnx")
    _graph(tmp_path / "plain.onnx", "Relu", residual=False)
    with pytest.raises(ValueError, match="no residual block"):
        RecognizerNet(tmp_path / "plain.onnx")
    _graph(tmp_path / "short.onnx", "Relu", residual=True)
    with pytest.raises(ValueError, match="the graph input"):
        RecognizerNet(tmp_path / "short.onnx")


def _fit(model, activations: torch.Tensor, ids: np.ndarray, seed: int) -> TailFinetune:
    budget = AttackBudget(finetune_steps=30, finetune_batch=16, seed=seed)
    return TailFinetune(RecognizerNet(model).eval(), budget).fit(activations, ids)


def test_finetuning_lowers_the_loss_and_repeats_under_one_seed(model, faces) -> None:
    crops, ids = faces
    blurred = np.stack([cv2.GaussianBlur(c, (0, 0), 5.0) for c in crops])  # a hard anonymizer
    torch.set_num_threads(1)
    activations = trunk_activations(RecognizerNet(model).eval(), blurred)
    first = _fit(model, activations, ids, seed=0)
    assert np.mean(first.losses[-5:]) < 0.5 * np.mean(first.losses[:5])
    again = _fit(model, activations, ids, seed=0)
    assert again.losses == first.losses
    for a, b in zip(first.net.tail_parameters(), again.net.tail_parameters(), strict=True):
        assert torch.equal(a, b)
    other = _fit(model, activations, ids, seed=1)
    assert other.losses != first.losses
    untouched = RecognizerNet(model)
    pairs = zip(first.net.tail_parameters(), untouched.tail_parameters(), strict=True)
    assert all(not torch.equal(a, b) for a, b in pairs)
    frozen = [s.layer for s in first.net.trunk_steps if s.op == "conv"]
    assert all(torch.equal(first.net.layers[k].weight, untouched.layers[k].weight) for k in frozen)


def test_eval_parrot_finetune_catches_identity_and_records_layers_and_budget(
    model, tmp_path
) -> None:
    root = shared_path("data", "lfw_dev")
    parser = argparse.ArgumentParser()
    add_eval_command(parser.add_subparsers())
    out = tmp_path / "report"
    args = parser.parse_args(
        ["eval", "--images", str(root), "--identities", str(root / "manifest.csv"),
         "--limit-identities", "16", "--methods", "identity", "--attacks",
         "aligned,parrot-finetune", "--finetune-steps", "40", "--attacker-model", str(model),
         "--no-dlib-attacker", "--small-faces", "0", "--no-utility", "--examples", "0",
         "--report", str(out), "--no-progress"]
    )  # fmt: skip
    assert args.handler(args) == 0
    report = json.loads((out / "report.json").read_text())
    name = model.name
    clear = report["attackers"][0]["on_originals"]["rank1"]
    row = report["methods"][0]
    for key in ("parrot_finetune_gallery_anonymized", "parrot_finetune_gallery_original"):
        figures = row["attacks"][key][name]
        assert figures["n_probes"] > 20
        assert figures["rank1"] >= min(0.95, clear - 0.05), (key, figures["rank1"], clear)
    tuned = row["parrot_finetune"][name]
    cpu = row["attack_cpu_s"][name]["parrot-finetune"]  # the fine-tune's cost is in it
    assert tuned["total_cpu_s"] <= cpu < tuned["total_cpu_s"] + 30, (cpu, tuned)
    shown = page_attack_cpu_s((out / "index.html").read_text())
    for key in ("parrot_finetune_gallery_anonymized", "parrot_finetune_gallery_original"):
        assert float(shown[(row["label"], key, name)]) == pytest.approx(cpu, abs=0.006)
    assert tuned["fine_tuned_layers"] == TAIL
    assert tuned["train_crops"] == 2 * report["dataset"]["attack_split"]["train_images"]
    assert tuned["total_cpu_s"] > 1.0  # 40 steps of the last block on the CPU
    budget = report["attack_budget"]["parrot_finetune"]
    assert (budget["steps"], budget["batch"], budget["torch_threads"]) == (40, 64, 1)
    assert budget["optimizer"].startswith("Adam lr 0.0001")
    assert report["attack_budget"]["parrot"]["fine_tuned_layers"] == "none (head only)"
