"""An InsightFace-style recognition ONNX as torch layers, split at the start of its last
residual block, so the parrot attacker can fine-tune that block and everything after it.

Only graphs made of Conv (batch norm folded), Clip, Relu, Add, Reshape and Constant are
converted (MobileFaceNet is); any other operator is refused with its name. Each Conv becomes a
``torch.nn.Conv2d`` holding the graph's own weights (``anon_core.accel.torchnet.conv_layer``).
The input is the RGB 112 x 112 crop scaled as InsightFace's ``ArcFaceONNX`` does,
``(pixel - 127.5) / 127.5``. The split point is the tensor the last ``Add`` carries around its
block (its skip input): ``trunk`` runs every node up to it, ``tail`` the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from faceveil.anon_core.accel.torchnet import conv_layer

OPS = ("Conv", "Clip", "Relu", "Add", "Reshape", "Constant")


@dataclass(frozen=True)
class _Step:
    """One operation: ``op`` ('conv', 'clip', 'relu', 'add', 'flatten') on named tensors."""

    op: str
    inputs: tuple[str, ...]
    output: str
    layer: int = -1
    bounds: tuple[float, float] = (-np.inf, np.inf)


def crops_tensor(crops: np.ndarray) -> torch.Tensor:
    """N x S x S x 3 uint8 RGB crops -> N x 3 x S x S float in [-1, 1] (the recognizer's input
    at S = 112; the pixel inversion's at its crop side)."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 127.5


def _scope(node: onnx.NodeProto) -> str:
    """A readable layer name: the node's output path without its leading '/' and op suffix."""
    return node.output[0].strip("/").removesuffix("/Conv_output_0")


class RecognizerNet(torch.nn.Module):
    """The recognition graph at ``path`` as torch layers: ``trunk`` then ``tail``."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        graph = onnx.load(str(self.path)).graph
        unknown = sorted({n.op_type for n in graph.node} - set(OPS))
        if unknown:
            raise ValueError(
                f"{self.path.name}: operators {unknown} cannot be fine-tuned "
                f"(only graphs of {', '.join(OPS)} are converted to torch)"
            )
        weights = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                weights[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.input_name = next(i.name for i in graph.input if i.name not in weights)
        self.output_name = graph.output[0].name
        self.layers = torch.nn.ModuleList()
        self.names: list[str] = []
        steps = [s for n in graph.node if (s := self._step(n, weights)) is not None]
        cut = self._cut(steps)
        self.split_name = steps[cut - 1].output
        self.trunk_steps, self.tail_steps = steps[:cut], steps[cut:]
        self._check_tail()

    def _step(self, node: onnx.NodeProto, weights: dict) -> _Step | None:
        inputs = tuple(i for i in node.input if i and i not in weights)
        out = node.output[0]
        if node.op_type == "Constant":
            return None
        if node.op_type == "Conv":
            self.layers.append(conv_layer(node, weights))
            self.names.append(_scope(node))
            return _Step("conv", inputs, out, len(self.layers) - 1)
        if node.op_type == "Clip":
            low, high = (
                float(weights[n]) if k < len(node.input) and (n := node.input[k]) else default
                for k, default in ((1, -np.inf), (2, np.inf))
            )
            return _Step("clip", inputs, out, bounds=(low, high))
        if node.op_type == "Reshape":
            shape = weights[node.input[1]].tolist()
            if len(shape) != 2 or shape[-1] != -1:
                raise ValueError(f"{self.path.name}: Reshape to {shape} is not a flatten")
            return _Step("flatten", inputs, out)
        return _Step(node.op_type.lower(), inputs, out)

    def _cut(self, steps: list[_Step]) -> int:
        """Index of the tail's first step: right after the last Add's skip input is made."""
        made = {s.output: k for k, s in enumerate(steps)}
        adds = [s for s in steps if s.op == "add"]
        if not adds:
            raise ValueError(f"{self.path.name}: no residual block (Add) to split at")
        skip = min(adds[-1].inputs, key=lambda name: made.get(name, -1))
        if skip not in made:
            raise ValueError(f"{self.path.name}: the last block's input is the graph input")
        return made[skip] + 1

    def _check_tail(self) -> None:
        made = {self.split_name}
        for s in self.tail_steps:
            if not set(s.inputs) <= made:
                raise ValueError(f"{self.path.name}: the last block reads earlier tensors")
            made.add(s.output)

    def _run(self, steps: list[_Step], env: dict[str, torch.Tensor], out: str) -> torch.Tensor:
        last = {name: k for k, s in enumerate(steps) for name in s.inputs}
        for k, s in enumerate(steps):
            args = [env[name] for name in s.inputs]
            if s.op == "conv":
                y = self.layers[s.layer](args[0])
            elif s.op == "clip":
                y = torch.clamp(args[0], *s.bounds)
            elif s.op == "relu":
                y = torch.relu(args[0])
            elif s.op == "add":
                y = args[0] + args[1]
            else:
                y = args[0].flatten(1)
            env[s.output] = y
            for name in [n for n in set(s.inputs) if last[n] == k and n != out]:
                del env[name]
        return env[out]

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The activations at the start of the last block (the split tensor)."""
        return self._run(self.trunk_steps, {self.input_name: x}, self.split_name)

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """The raw (not normalised) embedding from the split tensor."""
        return self._run(self.tail_steps, {self.split_name: h}, self.output_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.trunk(x))

    def tail_layers(self) -> list[str]:
        """The tail's convolutions, named as in the graph, with their shapes."""
        out = []
        for s in self.tail_steps:
            if s.op == "conv":
                conv = self.layers[s.layer]
                kind = "depthwise " if conv.groups > 1 else ""
                k = "x".join(str(v) for v in conv.kernel_size)
                out.append(f"{self.names[s.layer]} ({kind}{k}, "
                           f"{conv.in_channels}->{conv.out_channels})")  # fmt: skip
        return out

    def tail_parameters(self) -> list[torch.nn.Parameter]:
        """The weights and biases of the tail's convolutions."""
        return [
            p for s in self.tail_steps if s.op == "conv" for p in self.layers[s.layer].parameters()
        ]
