"""dlib's face recognizer rebuilt for onnxruntime: the same descriptors as dlib's own kernels on
real faces, dlib's serialized fields read as dlib writes them, and a file that is not the
network refused."""

from __future__ import annotations

import cv2
import dlib
import numpy as np
import pytest

from faceveil.anon_core import demo_data
from faceveil.anon_core.dlibnet import CHIP, WEIGHTS, DlibResNet, _Reader, onnx_model, read_layers
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.models import dlib_model


@pytest.fixture(scope="module")
def net() -> DlibResNet:
    return DlibResNet()


@pytest.fixture(scope="module")
def dlib_parts():
    """dlib's own recognizer, its 5-point shape predictor and its HOG face detector."""
    return (
        dlib.face_recognition_model_v1(str(dlib_model(WEIGHTS))),
        dlib.shape_predictor(str(dlib_model("shape_predictor_5_face_landmarks.dat"))),
        dlib.get_frontal_face_detector(),
    )


def _faces(name: str, dlib_parts) -> tuple[np.ndarray, list]:
    _, shape, detect = dlib_parts
    image = cv2.cvtColor(cv2.imread(str(demo_data.path(name))), cv2.COLOR_BGR2RGB)
    return image, [shape(image, r) for r in detect(image, 1)]


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg", "two_people.jpg", "obama_small.jpg"])
def test_descriptors_are_dlibs_own(net, dlib_parts, name):
    """dlib's compute_face_descriptor and the rebuilt network agree on every real face."""
    image, shapes = _faces(name, dlib_parts)
    assert shapes, f"dlib found no face in {name}"
    found = dlib.full_object_detections()
    found.extend(shapes)
    want = np.array([list(v) for v in dlib_parts[0].compute_face_descriptor(image, found)])
    got = net.describe(image, shapes)
    assert got.shape == (len(shapes), 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.linalg.norm(want, axis=1).min() > 0.5  # dlib's descriptors are far from zero


def test_a_face_is_described_alone_and_the_thread_count_changes_nothing(net, dlib_parts):
    image, shapes = _faces("two_people.jpg", dlib_parts)
    assert len(shapes) == 2
    both = net.describe(image, shapes)
    assert np.array_equal(both[1], net.describe(image, shapes[1:])[0])
    assert np.array_equal(both, DlibResNet(threads=2).describe(image, shapes))
    assert net.describe(image, []).shape == (0, 128)


def test_the_embedder_gives_dlibs_descriptors_normalised(dlib_parts):
    image, shapes = _faces("obama.jpg", dlib_parts)
    rect = dlib_parts[2](image, 1)[0]
    boxes = np.array([[rect.left(), rect.top(), rect.right(), rect.bottom(), 0.9]], np.float32)
    faces = Faces(boxes, np.zeros((1, 10), np.float32))
    got = DlibEmbedder()([image], [faces])[0]
    want = np.array(list(dlib_parts[0].compute_face_descriptor(image, shapes[0])))
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), rtol=0, atol=1e-5)


def test_dlibs_compact_fields_read_as_written():
    """Known answers from dlib's serialization: a string's length, a negative integer, a
    two-byte integer, and the mean red of dlib's input layer (mantissa 16093282, exponent -17)."""
    data = bytes.fromhex("010d") + b"loss_metric_2" + bytes.fromhex("8105028012")
    data += bytes.fromhex("036290f58111")
    r = _Reader(data, 0)
    assert r.string() == "loss_metric_2"
    assert r.integer() == -5
    assert r.integer() == 4736
    assert r.real() == 16093282 * 2.0**-17 == pytest.approx(122.782, abs=1e-5)
    assert r.pos == len(data)


def test_the_shipped_file_reads_as_dlibs_network():
    layers = read_layers(dlib_model(WEIGHTS))
    kinds = [x.kind for x in layers]
    assert kinds.count("conv") == 29 and kinds.count("add") == 14 and kinds[-1] == "fc"
    assert layers[0].size == (CHIP, CHIP)
    assert layers[1].weight.shape == (32, 3, 7, 7) and layers[1].size == (7, 2, 0)
    assert layers[-1].weight.shape == (256, 128)


def test_chips_of_the_wrong_shape_are_refused(net):
    with pytest.raises(ValueError, match="uint8"):
        net.chips(np.zeros((1, CHIP, CHIP, 3), np.float32))
    with pytest.raises(ValueError, match="150"):
        net.chips(np.zeros((1, 112, 112, 3), np.uint8))


def _rewritten(tmp_path, old: bytes, new: bytes, count: int = 1):
    data = dlib_model(WEIGHTS).read_bytes()
    assert data.count(old) >= count
    path = tmp_path / "edited.dat"
    path.write_bytes(data.replace(old, new, count))
    return path


def test_a_file_that_is_not_the_network_is_refused(tmp_path):
    """A residual unit without its relu, a truncated file, and bytes with no layers at all."""
    no_relu = _rewritten(tmp_path, b"\x01\x05relu_", b"\x01\x05xxxx_", 3)
    with pytest.raises(ValueError, match="not a residual unit|not dlib's ResNet"):
        onnx_model(no_relu)
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(dlib_model(WEIGHTS).read_bytes()[:100_000])
    with pytest.raises(ValueError):
        onnx_model(truncated)
    no_fc = _rewritten(tmp_path, b"\x01\x04fc_2", b"\x01\x04xx_2")
    with pytest.raises(ValueError, match="not dlib's ResNet"):
        onnx_model(no_fc)
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not dlib's ResNet"):
        onnx_model(empty)
