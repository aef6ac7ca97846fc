"""The fine-tuned parrot attacker: the recognizer's last residual block and every layer after it
(``RecognizerNet.tail``) trained on the training identities' anonymized and original crops
under an additive cosine margin loss, the rest of the network frozen.

The frozen trunk's activations are computed once per crop (the originals' once per run, the
anonymized crops' once per method); training then runs the tail only, ``finetune_steps`` Adam
steps on seeded batches with one class centre per training identity (started at the mean
embedding of its crops). Held-out anonymized probes and galleries are embedded with the
fine-tuned network and scored like the head-only parrot (``attacks._parrot_finetune``). Only
ONNX recognizers that ``RecognizerNet`` converts can be fine-tuned; dlib's cannot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from faceveil.anon_core.attackers import OnnxAttacker
from faceveil.jobs.evaluate.config import AttackBudget
from faceveil.jobs.evaluate.heads import torch_threads
from faceveil.jobs.evaluate.measurements import EvalSession, MethodRun, Originals
from faceveil.jobs.evaluate.pixels import seeded_batches
from faceveil.jobs.evaluate.recognizer import RecognizerNet, crops_tensor

CHUNK = 64  # crops per trunk forward pass


def trunk_activations(net: RecognizerNet, crops: np.ndarray) -> torch.Tensor:
    """The frozen trunk's activations of N x 112 x 112 x 3 crops (no gradient)."""
    with torch.no_grad():
        parts = [net.trunk(crops_tensor(crops[s : s + CHUNK])) for s in range(0, len(crops), CHUNK)]
    return torch.cat(parts)


@dataclass
class TailFinetune:
    """Fits ``net``'s tail on trunk activations of labelled crops; ``losses`` per step."""

    net: RecognizerNet
    budget: AttackBudget
    losses: list[float] = field(default_factory=list)
    fit_cpu_s: float = 0.0

    def fit(self, activations: torch.Tensor, labels: np.ndarray) -> TailFinetune:
        """Train the tail on activations (N x C x H x W) of identities ``labels``."""
        started = time.process_time()
        with torch_threads(self.budget.threads):
            self._fit(activations, labels)
        self.fit_cpu_s = time.process_time() - started
        return self

    def _fit(self, activations: torch.Tensor, labels: np.ndarray) -> None:
        b = self.budget
        torch.manual_seed(b.seed)
        generator = torch.Generator().manual_seed(b.seed)
        for p in self.net.parameters():
            p.requires_grad_(False)
        tail = self.net.tail_parameters()
        for p in tail:
            p.requires_grad_(True)
        _, y = np.unique(labels, return_inverse=True)
        ty = torch.from_numpy(y.astype(np.int64))
        with torch.no_grad():
            start = self.embed_activations(activations)
            centres = torch.stack([start[ty == c].mean(0) for c in range(int(y.max()) + 1)])
        classes = nn.Parameter(centres)
        optimizer = torch.optim.Adam([{"params": tail, "lr": b.finetune_lr},
                                      {"params": [classes], "lr": b.lr}])  # fmt: skip
        for pick in seeded_batches(len(ty), b.finetune_steps, b.finetune_batch, generator):
            embedded = nn.functional.normalize(self.net.tail(activations[pick]), dim=1)
            cos = embedded @ nn.functional.normalize(classes, dim=1).T
            margin = nn.functional.one_hot(ty[pick], cos.shape[1]) * b.margin
            loss = nn.functional.cross_entropy(b.scale * (cos - margin), ty[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.losses.append(float(loss.detach()))
        for p in tail:
            p.requires_grad_(False)

    def embed_activations(self, activations: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of trunk activations by the (current) tail."""
        with torch.no_grad():
            parts = [
                self.net.tail(activations[s : s + CHUNK]) for s in range(0, len(activations), CHUNK)
            ]
        return nn.functional.normalize(torch.cat(parts), dim=1)


def _tenth(losses: list[float], last: bool) -> float | None:
    if not losses:
        return None
    k = max(1, len(losses) // 10)
    return round(float(np.mean(losses[-k:] if last else losses[:k])), 4)


def _original_activations(net: RecognizerNet, originals: Originals, name: str) -> torch.Tensor:
    """The originals' trunk activations (every sample; zeros without a crop), once per run."""
    cache = originals.trunk_cache
    if name not in cache:
        with torch_threads(1):
            cache[name] = trunk_activations(net, originals.faces112[name])
    return cache[name]


def _one_recognizer(name: str, run: MethodRun, originals: Originals, session: EvalSession):
    """(anonymized, original) fine-tuned embeddings of the held-out samples, and a summary."""
    budget, split = session.config.budget, session.plan.split
    train, test = split.train & run.valid, split.test & run.valid
    n, dim = run.embeddings[name].shape
    out = (np.full((n, dim), np.nan, np.float32), np.full((n, dim), np.nan, np.float32))
    if len(np.unique(originals.ids[train])) < 2:
        return out, {"reason": "fewer than 2 training identities"}
    started = time.process_time()
    net = RecognizerNet(originals.model_paths[name]).eval()
    originals_h = _original_activations(net, originals, name)
    use = train | test
    with torch_threads(budget.threads):
        anonymized_h = torch.zeros_like(originals_h)
        anonymized_h[use] = trunk_activations(net, run.faces112[name][use])
    trunk_s = time.process_time() - started
    pick = torch.from_numpy(train)
    x = torch.cat([anonymized_h[pick], originals_h[pick]])
    labels = np.concatenate([originals.ids[train], originals.ids[train]])
    tuned = TailFinetune(net, budget).fit(x, labels)
    held = torch.from_numpy(test)
    with torch_threads(budget.threads):
        out[0][test] = tuned.embed_activations(anonymized_h[held]).numpy()
        out[1][test] = tuned.embed_activations(originals_h[held]).numpy()
    summary = {
        "fine_tuned_layers": net.tail_layers(),
        "split_at": net.split_name,
        "tuned_parameters": sum(p.numel() for p in net.tail_parameters()),
        "train_crops": len(labels),
        "loss_first_tenth": _tenth(tuned.losses, last=False),
        "loss_last_tenth": _tenth(tuned.losses, last=True),
        "trunk_cpu_s": round(trunk_s, 3),
        "fit_cpu_s": round(tuned.fit_cpu_s, 3),
        "total_cpu_s": round(time.process_time() - started, 3),
    }
    return out, summary


def finetuned_embeddings(
    run: MethodRun, originals: Originals, session: EvalSession
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """For every ONNX recognizer: the tail fine-tuned on one method's training crops, and the
    held-out samples' (anonymized, original) embeddings by it (NaN elsewhere); a summary per
    recognizer for the report (a reason for those that cannot be fine-tuned)."""
    out, summary = {}, {}
    for a in session.models.attackers:
        if not isinstance(a, OnnxAttacker) or a.name not in originals.faces112:
            summary[a.name] = {
                "reason": f"{a.name} is not an ONNX recognizer (dlib's ResNet has no training "
                "API): it cannot be fine-tuned"
            }
            continue
        try:
            out[a.name], summary[a.name] = _one_recognizer(a.name, run, originals, session)
        except ValueError as exc:
            summary[a.name] = {"reason": str(exc)}
    return out, summary
