"""The torch device path on the CPU: CenterFace by torch against onnxruntime on real faces,
multi-scale views on the device, the device JPEG codec and its CPU fallback."""

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from faceveil.anon_core import AnonConfig, FaceAnonymizer
from faceveil.anon_core.accel import AccelOptions, accelerated_anonymizer
from faceveil.anon_core.accel.detect import DeviceDetector, area_resize, padded
from faceveil.anon_core.accel.jpeg import DeviceJpeg, torchvision_io
from faceveil.anon_core.accel.torchnet import CenterFaceNet, TorchCenterFace
from faceveil.anon_core.detectors import MultiScaleDetector, build_detector
from faceveil.anon_core.detectors import centerface as cf
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.imageio import decode_image, encode_image
from tests.factories import rgb, shared_path

CPU = torch.device("cpu")
LFW_STEP = 40  # every 40th lfw_dev image (28 of 1,110) keeps the CPU tests short
# Measured with fp32 on 111 lfw_dev images and the 9 fixtures: box corners within 0.00025 px
# and scores within 5e-7 of onnxruntime; the tolerances leave room for other CPU kernels only.
FP32_BOX_PX = 0.01
FP32_SCORE = 1e-4
# bf16 on the same images: the same faces, boxes moved by up to 8.5 px, scores by up to
# 0.016; on lfw_dev upscaled to 512 x 512 it lost a face (bench_gpu), so fp32 is the default.
BF16_BOX_PX = 12.0
BF16_SCORE = 0.03


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: CPU convolutions on a shared, loaded machine are many times slower
    with more (measured 0.07 s vs 1.0 s for one 256 x 256 image on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def host():
    return build_detector("centerface", threads=1)


@pytest.fixture(scope="module")
def faces_images():
    """lfw_dev (every LFW_STEP-th image, 250 x 250) and the group/edge-case fixtures."""
    lfw = sorted(shared_path("data", "lfw_dev").rglob("*.jpg"))[::LFW_STEP]
    fixtures = sorted(shared_path("data", "fixtures").glob("*.[jp][pn]g"))
    assert len(lfw) >= 25 and len(fixtures) >= 9
    return [(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in lfw + fixtures]


@pytest.fixture(scope="module")
def expected(host, faces_images):
    """The onnxruntime (CPU path) faces of ``faces_images``."""
    return host([im for _, im in faces_images])


def _device_faces(detector: DeviceDetector, images: list[np.ndarray]) -> list[Faces]:
    """Each image through the device detector, images of one padded size in one batch."""
    out: list[Faces] = [Faces.empty()] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(padded(*image.shape[:2]), []).append(i)
    for (ph, pw), members in groups.items():
        batch = np.zeros((len(members), ph, pw, 3), np.uint8)
        for row, i in enumerate(members):
            h, w = images[i].shape[:2]
            batch[row, :h, :w] = images[i]
        sizes = [images[i].shape[:2] for i in members]
        found = detector(torch.from_numpy(batch), sizes, [images[i] for i in members])
        for i, faces in zip(members, found, strict=True):
            out[i] = faces
    return out


def _compare(host, faces_images, expected, precision: str) -> tuple[float, float, int]:
    """(largest box shift, largest score change, faces) of the torch path vs onnxruntime;
    asserts the same number of faces in every image (recall unchanged)."""
    names = [n for n, _ in faces_images]
    images = [im for _, im in faces_images]
    got = _device_faces(DeviceDetector(host, CPU, AccelOptions(precision=precision)), images)
    shift = score = 0.0
    for name, e, g in zip(names, expected, got, strict=True):
        assert len(e) == len(g), f"{name}: onnxruntime {len(e)} faces, torch {precision} {len(g)}"
        if len(e):
            shift = max(shift, float(np.abs(e.boxes[:, :4] - g.boxes[:, :4]).max()))
            shift = max(shift, float(np.abs(e.landmarks5 - g.landmarks5).max()))
            score = max(score, float(np.abs(e.boxes[:, 4] - g.boxes[:, 4]).max()))
    return shift, score, sum(len(e) for e in expected)


def test_torch_network_gives_onnxruntime_maps(host):
    image = rgb("two_people.jpg")
    h, w = image.shape[:2]
    batch = np.zeros((1, *padded(h, w), 3), np.uint8)
    batch[0, :h, :w] = image
    blob = batch.transpose(0, 3, 1, 2).astype(np.float32)
    expected = host.base.session.run(cf._OUTPUTS, {cf._INPUT: blob})
    got = TorchCenterFace(None, CPU)(torch.from_numpy(batch))
    for e, g in zip(expected, got, strict=True):
        assert g.dtype == torch.float32 and tuple(g.shape) == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=0, atol=2e-4)


def test_network_reads_every_weight_of_the_graph():
    net = CenterFaceNet()
    convs = sum(isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d) for m in net.layers)
    assert convs == 63  # 60 Conv + 3 ConvTranspose nodes, 3 batch norms folded into the latter
    assert [s.op for s in net.steps].count("conv") == 63
    assert net.outputs == ["537", "538", "539", "540"]


def test_fp32_boxes_match_onnxruntime_on_real_faces(host, faces_images, expected):
    shift, score, faces = _compare(host, faces_images, expected, "fp32")
    assert faces >= 35
    assert shift <= FP32_BOX_PX and score <= FP32_SCORE


def test_bf16_finds_these_faces_but_moves_boxes_by_pixels(host, faces_images, expected):
    shift, score, _ = _compare(host, faces_images, expected, "bf16")
    assert FP32_BOX_PX < shift <= BF16_BOX_PX and score <= BF16_SCORE


def test_unknown_precision_and_fp16_on_cpu_are_refused():
    with pytest.raises(ValueError, match="unknown precision"):
        TorchCenterFace(None, CPU, "int8")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TorchCenterFace(None, CPU, "fp16")


def test_area_resize_on_the_device_is_opencvs_inter_area():
    image = np.array(rgb("obama.jpg"))
    for h, w in ((301, 415), (240, 320), image.shape[:2]):
        expected = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        got = area_resize(torch.from_numpy(image), h, w).numpy()
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def _group_photo() -> np.ndarray:
    """A 2600 x 1700 photo with the group fixture large and small faces pasted around it."""
    canvas = np.full((1700, 2600, 3), 128, np.uint8)
    group = rgb("two_people.jpg")
    canvas[100 : 100 + group.shape[0], 200 : 200 + group.shape[1]] = group
    small = cv2.resize(rgb("obama_small.jpg"), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    for x in (300, 1400, 2200):
        canvas[1300 : 1300 + small.shape[0], x : x + small.shape[1]] = small
    return canvas


def test_multiscale_views_on_the_device_find_the_cpu_faces(host):
    assert isinstance(host, MultiScaleDetector)
    image = _group_photo()
    expected = host([image])[0]
    assert len(expected) >= 4  # the two group faces and small ones only the tiles see
    detector = DeviceDetector(host, CPU, AccelOptions())
    got = detector(torch.from_numpy(image)[None], [image.shape[:2]], [image])[0]
    assert len(got) == len(expected)
    order_e, order_g = np.argsort(expected.boxes[:, 0]), np.argsort(got.boxes[:, 0])
    shift = np.abs(expected.boxes[order_e, :4] - got.boxes[order_g, :4]).max()
    assert shift <= 1.0


def _jpeg(image: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def _codec_cases() -> tuple[list[bytes], list[bool]]:
    """Byte strings and whether each is a plain JPEG the device codec takes."""
    image = rgb("obama_small.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the CPU decoder must apply it
    png = io.BytesIO()
    Image.fromarray(image).save(png, "PNG")
    plain = _jpeg(image)
    cases = [plain, _jpeg(image, exif=exif.tobytes()), png.getvalue(), plain[:-200], b"", plain]
    return cases, [True, False, False, False, False, True]


@pytest.mark.parametrize(
    "use_torchvision",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                torchvision_io() is None, reason="torchvision not importable here (optional)"
            ),
        ),
    ],
)
def test_device_codec_takes_plain_jpegs_and_leaves_the_rest(use_torchvision):
    codec = DeviceJpeg(CPU, use_torchvision=use_torchvision)
    cases, plain = _codec_cases()
    decoded = codec.decode(cases, 10**8)
    assert [d is not None for d in decoded] == plain
    reference = decode_image(cases[0]).rgb
    for image in (decoded[0], decoded[5]):
        assert image.dtype == torch.uint8 and tuple(image.shape) == reference.shape
        assert np.abs(image.numpy().astype(int) - reference.astype(int)).max() <= 2
    encoded = codec.encode([decoded[0], decoded[5]])
    assert encoded[0] == encoded[1]
    again = decode_image(encoded[0])
    assert again.format == "JPEG" and again.rgb.shape == reference.shape
    assert not Image.open(io.BytesIO(encoded[0])).getexif()
    assert np.abs(again.rgb.astype(int) - reference.astype(int)).mean() < 2
    if not use_torchvision:
        assert codec.name == "PIL (host)" and encoded[0] == encode_image(reference, "jpg")


def test_stage_codec_decodes_and_encodes_through_the_pipeline(host):
    accel = accelerated_anonymizer(AnonConfig(method="blur"), detector=host)
    plain = FaceAnonymizer(AnonConfig(method="blur"), detector=host)
    accel.stage.codec = DeviceJpeg(CPU, use_torchvision=False)
    cases, plain_jpegs = _codec_cases()
    results = accel.batch(cases)
    expected = plain.batch(cases)
    assert [r.status for r in results] == [r.status for r in expected]
    assert [r.stage for r in results] == [r.stage for r in expected]
    for r in results:
        if r.ok:
            assert r.encoded == encode_image(r.output.image, r.ext) and len(r.faces) == 1
    assert plain_jpegs.count(True) == 2 and results[0].encoded == results[5].encoded
    accel.close()


def test_onnxruntime_backend_stays_an_option(host, faces_images, expected):
    """Backend 'onnxruntime' binds the device batch to the detector's own session: the CPU
    path's faces (one network, one decode; batches of another size round within 1e-3 px)."""
    detector = DeviceDetector(host, CPU, AccelOptions(backend="onnxruntime"))
    assert detector.run.session is host.base.session
    images = [im for _, im in faces_images]
    for e, g in zip(expected, _device_faces(detector, images), strict=True):
        assert len(e) == len(g)
        np.testing.assert_allclose(g.boxes, e.boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(g.landmarks5, e.landmarks5, rtol=0, atol=1e-3)
