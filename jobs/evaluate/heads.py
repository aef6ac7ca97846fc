"""What the learning attackers fit on frozen recognizer features: a metric head with a margin
loss (parrot, torch) and a ridge map from anonymized to original features (inversion)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from faceveil.jobs.evaluate.config import AttackBudget


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``n`` inside the block (one thread trains these small
    models several times faster on a shared 2-core machine than two, and deterministically)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Head(nn.Module):
    """x -> normalise(x + f(x)); f starts at zero, so training starts from the raw features."""

    def __init__(self, dim: int, budget: AttackBudget) -> None:
        super().__init__()
        if budget.head == "mlp":
            last = nn.Linear(budget.hidden, dim)
            self.f: nn.Module = nn.Sequential(nn.Linear(dim, budget.hidden), nn.ReLU(), last)
        else:
            last = nn.Linear(dim, dim)
            self.f = last
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x + self.f(x), dim=1)


class MetricHead:
    """A parrot attacker's head: fit on labelled features, then maps any features of the same
    recognizer into its identity space (L2-normalised)."""

    def __init__(self, budget: AttackBudget) -> None:
        self.budget = budget
        self._head: _Head | None = None

    def fit(self, x: np.ndarray, labels: np.ndarray) -> MetricHead:
        """Train on features ``x`` (N x D) of identities ``labels`` (any integers)."""
        with torch_threads(self.budget.threads):
            return self._fit(x, labels)

    def _fit(self, x: np.ndarray, labels: np.ndarray) -> MetricHead:
        b = self.budget
        generator = torch.Generator().manual_seed(b.seed)
        torch.manual_seed(b.seed)
        _, y = np.unique(labels, return_inverse=True)
        head = _Head(x.shape[1], b)
        classes = nn.Parameter(torch.randn(int(y.max()) + 1, x.shape[1], generator=generator))
        with torch.no_grad():  # class centres start at the mean feature of each identity
            for c in range(classes.shape[0]):
                classes[c] = torch.from_numpy(x[y == c].mean(axis=0))
        optimizer = torch.optim.Adam([*head.parameters(), classes], lr=b.lr)
        tx, ty = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(y.astype(np.int64))
        for _ in range(b.epochs):
            order = torch.randperm(len(tx), generator=generator)
            for start in range(0, len(tx), b.batch):
                pick = order[start : start + b.batch]
                cos = head(tx[pick]) @ nn.functional.normalize(classes, dim=1).T
                margin = nn.functional.one_hot(ty[pick], cos.shape[1]) * b.margin
                loss = nn.functional.cross_entropy(b.scale * (cos - margin), ty[pick])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self._head = head.eval()
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._head is None:
            raise RuntimeError("the head is not fitted")
        with torch_threads(self.budget.threads), torch.no_grad():
            return self._head(torch.from_numpy(np.asarray(x, np.float32))).numpy()


class RidgeInversion:
    """A linear map (with bias) from anonymized to original features, by ridge regression."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self._w: np.ndarray | None = None

    def fit(self, anonymized: np.ndarray, originals: np.ndarray) -> RidgeInversion:
        """Fit on pairs (row i of both is the same image, before and after)."""
        a = np.hstack([anonymized, np.ones((len(anonymized), 1))]).astype(np.float64)
        gram = a.T @ a + self.alpha * np.eye(a.shape[1])
        self._w = np.linalg.solve(gram, a.T @ np.asarray(originals, np.float64))
        return self

    def __call__(self, anonymized: np.ndarray) -> np.ndarray:
        if self._w is None:
            raise RuntimeError("the inversion map is not fitted")
        a = np.hstack([anonymized, np.ones((len(anonymized), 1))])
        return _normalise(a @ self._w)
