"""The accelerated path on the CPU: same detections, same looks, order kept, fail closed."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faceveil.anon_core import AnonConfig, FaceAnonymizer, methods
from faceveil.anon_core.accel import (
    AcceleratedStage,
    AccelOptions,
    Prefetcher,
    TorchRegionMethods,
    accelerated_anonymizer,
    select_backend,
)
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.pipeline import AnonResult
from faceveil.anon_core.stage import CpuStage, Stage
from tests.factories import rgb

DEMO = Path(__file__).resolve().parents[2] / "anon_core" / "demo_data"
BUNDLED = sorted([*DEMO.glob("*.jpg"), *DEMO.glob("*.png")])
NO_CUDA = not torch.cuda.is_available()
BLUR_MAX_DIFF = 1  # measured max |torch - OpenCV| on the bundled images; pixelate measured 0
OVERLAP_MAX_DIFF = 2  # a later region blurs an earlier one's result, so differences add up

# Boxes (x1, y1, x2, y2, score) and landmarks5 on the bundled photos, recorded before the CPU
# and device paths shared one CenterFace decode; both paths must still give exactly these.
PINNED_DETECTIONS = {
    "astronaut.png": (
        [[181.5298, 58.202, 269.8827, 177.8111, 0.9291]],
        [
            [
                203.1539,
                101.6795,
                247.0072,
                104.5138,
                223.2649,
                125.0758,
                203.3779,
                142.3272,
                241.3349,
                144.4188,
            ]
        ],
    ),
    "biden.jpg": (
        [[420.8005, 161.7632, 729.5391, 588.95, 0.8809]],
        [
            [
                531.1865,
                318.1407,
                671.4533,
                350.5086,
                594.6948,
                415.342,
                506.5203,
                462.4794,
                627.4528,
                488.6939,
            ]
        ],
    ),
    "obama.jpg": (
        [[371.841, 111.6673, 600.1627, 420.4927, 0.9052]],
        [
            [
                437.6815,
                219.5101,
                554.9987,
                210.932,
                507.387,
                268.2217,
                449.793,
                327.6753,
                552.3268,
                320.5504,
            ]
        ],
    ),
    "obama2.jpg": (
        [[194.0333, 216.0821, 473.7108, 659.6103, 0.747]],
        [
            [
                236.6063,
                358.4186,
                376.0837,
                379.6265,
                272.8965,
                450.4608,
                228.9192,
                517.8932,
                351.3495,
                532.9955,
            ]
        ],
    ),
    "obama3.jpg": (
        [[626.9974, 239.9535, 911.7166, 628.002, 0.8977]],
        [
            [
                732.5425,
                376.9142,
                865.0671,
                389.1053,
                804.9825,
                455.0978,
                724.4447,
                517.0172,
                836.0587,
                527.4181,
            ]
        ],
    ),
    "obama_partial_face.jpg": (
        [[0.0, 73.9054, 183.4814, 441.9814, 0.8917]],
        [
            [
                19.0625,
                208.4161,
                146.7466,
                207.4858,
                72.9408,
                280.3775,
                24.054,
                338.996,
                135.5727,
                336.7838,
            ]
        ],
    ),
    "obama_partial_face2.jpg": (
        [[382.2102, 89.5257, 549.8785, 442.6902, 0.8972]],
        [
            [
                435.0282,
                212.0609,
                539.6586,
                210.0465,
                498.0454,
                279.7648,
                438.1435,
                342.8772,
                528.9402,
                341.5118,
            ]
        ],
    ),
    "obama_small.jpg": (
        [[107.5426, 36.3599, 216.2702, 191.4627, 0.9518]],
        [
            [
                134.5522,
                98.9737,
                188.0483,
                94.7605,
                162.7086,
                125.3264,
                138.1678,
                149.512,
                185.2123,
                145.676,
            ]
        ],
    ),
    "two_people.jpg": (
        [
            [230.4086, 21.358, 389.916, 230.7739, 0.8898],
            [780.5365, 39.0031, 951.2546, 268.8762, 0.8833],
        ],
        [
            [
                285.811,
                93.2175,
                361.6388,
                98.9865,
                325.8302,
                135.1649,
                282.6979,
                169.5869,
                346.643,
                174.4196,
            ],
            [
                841.7779,
                122.0835,
                920.2554,
                138.3357,
                879.746,
                174.5504,
                830.7887,
                201.2757,
                897.6329,
                214.4898,
            ],
        ],
    ),
}


@pytest.fixture(scope="module")
def plain():
    return FaceAnonymizer(AnonConfig(method="blur", threads=1))


@pytest.fixture(scope="module")
def accel(plain):
    anonymizer = accelerated_anonymizer(AnonConfig(method="blur"), detector=plain.detector)
    yield anonymizer
    anonymizer.close()


@pytest.fixture(scope="module")
def bundled(plain, accel):
    """Both paths over every bundled image, once: (name, plain result, accelerated result)."""
    data = [p.read_bytes() for p in BUNDLED]
    return list(zip([p.name for p in BUNDLED], plain.batch(data), accel.batch(data), strict=True))


def _changed_inside_only(original: np.ndarray, result: np.ndarray, regions: np.ndarray) -> None:
    inside = np.zeros(original.shape[:2], bool)
    for x1, y1, x2, y2 in regions:
        inside[y1:y2, x1:x2] = True
        diff = np.abs(result[y1:y2, x1:x2].astype(int) - original[y1:y2, x1:x2].astype(int))
        assert (diff.max(axis=2) > 0).mean() > 0.9 and diff.mean() > 8
    assert np.array_equal(result[~inside], original[~inside])


def test_same_detections_as_plain_path_on_bundled_images(bundled):
    assert len(bundled) >= 9
    for name, cpu, acc in bundled:
        assert cpu.status == acc.status == "anonymized", name
        assert len(cpu.faces) == len(acc.faces) > 0, name
        assert np.abs(cpu.faces.boxes[:, :4] - acc.faces.boxes[:, :4]).max() <= 1.0, name
        assert np.abs(cpu.faces.landmarks5 - acc.faces.landmarks5).max() <= 1.0, name
        assert np.array_equal(cpu.output.regions, acc.output.regions), name
        assert acc.metadata()["faces"][0]["method"] == "blur"


@pytest.mark.parametrize("path", ["plain", "accelerated"])
def test_pinned_detections_on_bundled_images(bundled, path):
    assert sorted(PINNED_DETECTIONS) == [name for name, _, _ in bundled]
    for name, cpu, acc in bundled:
        faces = cpu.faces if path == "plain" else acc.faces
        boxes, landmarks = (np.array(v, np.float64) for v in PINNED_DETECTIONS[name])
        assert faces.boxes.shape == boxes.shape, name
        np.testing.assert_allclose(faces.boxes, boxes, rtol=0, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(faces.landmarks5, landmarks, rtol=0, atol=1e-3, err_msg=name)


def test_blur_changes_every_region_and_nothing_outside(bundled):
    for name, cpu, acc in bundled:
        _changed_inside_only(acc.original.rgb, acc.output.image, acc.output.regions)
        diff = np.abs(acc.output.image.astype(int) - cpu.output.image.astype(int)).max()
        assert diff <= BLUR_MAX_DIFF, name
        assert decode_image(acc.encoded).rgb.shape == acc.original.rgb.shape


@pytest.mark.parametrize("name", ["pixelate", "mask"])
def test_pixelate_and_mask_match_opencv(name, plain):
    image = rgb("two_people.jpg")
    faces = plain.detector([image])[0]
    cpu = methods.create(name)(image, faces)
    acc = TorchRegionMethods(name)(image, faces)
    _changed_inside_only(image, acc.image, acc.regions)
    assert np.array_equal(acc.regions, cpu.regions) and acc.methods == cpu.methods
    if name == "mask":
        assert np.array_equal(acc.image, cpu.image)
    else:
        assert np.abs(acc.image.astype(int) - cpu.image.astype(int)).max() <= 1


def test_mask_through_the_accelerated_batch_is_identical(plain):
    config = AnonConfig(method="mask", method_options={"color": (10, 200, 30)})
    accel = accelerated_anonymizer(config, detector=plain.detector)
    reference = methods.create("mask", color=(10, 200, 30))
    images = [rgb("obama_small.jpg"), rgb("astronaut.png")]
    for image, result in zip(images, accel.batch(images), strict=True):
        expected = reference(image, plain.detector([image])[0]).image
        assert result.status == "anonymized" and np.array_equal(result.output.image, expected)
    accel.close()


@pytest.mark.parametrize("name", ["blur", "pixelate"])
def test_overlapping_regions_are_done_in_order_like_the_cpu(name):
    image = rgb("astronaut.png")
    boxes = np.array([[100, 80, 260, 260, 0.9], [180, 150, 330, 330, 0.8], [20, 300, 90, 360, 0.7]])
    faces = Faces(boxes.astype(np.float32), np.zeros((3, 10), np.float32))
    cpu = methods.create(name)(image, faces)
    acc = TorchRegionMethods(name)(image, faces)
    assert np.abs(acc.image.astype(int) - cpu.image.astype(int)).max() <= OVERLAP_MAX_DIFF
    _changed_inside_only(image, acc.image, acc.regions)


def test_mixed_sizes_share_a_padded_batch(plain, accel):
    big = rgb("astronaut.png")
    images = [big, np.ascontiguousarray(big[6:500, 3:497]), rgb("obama_small.jpg")]
    for image, cpu, acc in zip(images, plain.batch(images), accel.batch(images), strict=True):
        assert len(cpu.faces) == len(acc.faces) == 1
        assert np.abs(cpu.faces.boxes[:, :4] - acc.faces.boxes[:, :4]).max() <= 1.0
        assert acc.output.image.shape == image.shape
        _changed_inside_only(image, acc.output.image, acc.output.regions)


def test_prefetcher_keeps_order_and_quarantines_bad_bytes(accel):
    good = [p.read_bytes() for p in (DEMO / "obama_small.jpg", DEMO / "astronaut.png")]
    windows = [[good[0], b"", good[1]], [b"junk"], [], [good[1], good[0]]]
    with Prefetcher(accel, workers=2) as prefetcher:
        results = list(prefetcher.map(windows))
    assert [[r.status for r in w] for w in results] == [
        ["anonymized", "quarantined", "anonymized"],
        ["quarantined"],
        [],
        ["anonymized", "anonymized"],
    ]
    assert results[0][1].stage == results[1][0].stage == "decode"
    assert results[0][1].encoded == b"" and results[1][0].encoded == b""
    direct = accel.batch(good)
    assert results[0][0].encoded == results[3][1].encoded == direct[0].encoded
    assert results[0][2].encoded == results[3][0].encoded == direct[1].encoded
    assert [len(w) for w in accel.map(windows)] == [3, 1, 0, 2]


class _FlakyStages:
    """Stages whose decode or encode blows up on chosen items, as a broken codec would."""

    def decode(self, item):
        if item == b"crash-decode":
            raise TypeError("codec bug")
        return item

    def process(self, decoded):
        return decoded

    def finish(self, staged):
        if isinstance(staged, AnonResult):
            return staged
        if staged == b"crash-encode":
            raise OSError("disk full")
        return AnonResult("no_face", encoded=staged)


def test_prefetcher_turns_per_item_crashes_into_quarantine():
    windows = [[b"a", b"crash-decode", b"b"], [b"crash-encode", b"c"]]
    with Prefetcher(_FlakyStages(), workers=2) as prefetcher:
        results = [r for w in prefetcher.map(windows) for r in w]
    assert [(r.status, r.stage) for r in results] == [
        ("no_face", ""),
        ("quarantined", "decode"),
        ("no_face", ""),
        ("quarantined", "anonymize"),
        ("no_face", ""),
    ]
    assert [r.encoded for r in results if r.ok] == [b"a", b"b", b"c"]


def test_device_failure_quarantines_instead_of_passing_through(plain, monkeypatch):
    accel = accelerated_anonymizer(AnonConfig(method="blur"), detector=plain.detector)
    image = rgb("obama_small.jpg")

    def broken(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(accel.stage.regions_method, "apply", broken)
    results = accel.batch([image, image])
    assert [(r.status, r.stage, r.encoded) for r in results] == [
        ("quarantined", "anonymize", b"")
    ] * 2
    monkeypatch.setattr(accel.stage.device_detector, "run", broken)
    assert accel(image).stage == "detect"
    accel.close()


def test_other_methods_run_on_the_host_after_device_detection(plain):
    accel = accelerated_anonymizer(
        AnonConfig(), detector=plain.detector, method=methods.create("blur")
    )
    assert accel.stage.regions_method is None
    image = rgb("obama_small.jpg")
    result, expected = accel(image), plain(image)
    assert result.status == "anonymized" and np.array_equal(
        result.output.image, expected.output.image
    )
    accel.close()


def test_select_backend_cpu_is_the_plain_pipeline():
    anonymizer = select_backend(AnonConfig())
    assert type(anonymizer) is FaceAnonymizer and type(anonymizer.stage) is CpuStage
    with pytest.raises(ValueError, match="unknown device"):
        select_backend(AnonConfig(device="tpu"))


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on machines without CUDA")
def test_selecting_cuda_without_a_gpu_fails_at_once_and_clearly():
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="device 'cuda' requested"):
        select_backend(AnonConfig(device="cuda"))
    with pytest.raises(RuntimeError, match="cuda"):
        accelerated_anonymizer(AnonConfig(device="cuda"))
    assert time.monotonic() - started < 10


def test_select_backend_injects_the_accelerated_stage(plain):
    anonymizer = select_backend(AnonConfig(), accelerated=True)
    assert type(anonymizer) is FaceAnonymizer and type(anonymizer.stage) is AcceleratedStage
    assert isinstance(anonymizer.stage, Stage) and isinstance(CpuStage(AnonConfig()), Stage)
    assert anonymizer.method is anonymizer.stage.regions_method
    with pytest.raises(ValueError, match="to the stage"):
        FaceAnonymizer(AnonConfig(), detector=plain.detector, stage=anonymizer.stage)


def test_gpu_only_options_are_refused_on_cpu():
    for options in (AccelOptions(backend="onnxruntime", tensorrt=True), AccelOptions(nvjpeg=True)):
        with pytest.raises(ValueError, match="need device 'cuda'"):
            accelerated_anonymizer(AnonConfig(), options)
    with pytest.raises(ValueError, match="use backend 'onnxruntime'"):
        AccelOptions(tensorrt=True)
    with pytest.raises(ValueError, match="unknown backend"):
        AccelOptions(backend="tensorflow")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        accelerated_anonymizer(AnonConfig(), AccelOptions(precision="fp16"))
    with pytest.raises(ValueError, match="fp16"):
        TorchRegionMethods("blur", half=True)
    with pytest.raises(ValueError, match="no torch version"):
        TorchRegionMethods("surrogate")


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU (extra check, not counted as done)")
def test_cuda_path_matches_the_cpu_path(plain):
    accel = select_backend(AnonConfig(device="cuda"))
    data = [p.read_bytes() for p in BUNDLED]
    for cpu, acc in zip(plain.batch(data), accel.batch(data), strict=True):
        assert len(cpu.faces) == len(acc.faces)
        assert np.abs(cpu.faces.boxes[:, :4] - acc.faces.boxes[:, :4]).max() <= 1.0
        _changed_inside_only(acc.original.rgb, acc.output.image, acc.output.regions)
        assert np.abs(acc.output.image.astype(int) - cpu.output.image.astype(int)).max() <= 2
    accel.close()


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU (extra check, not counted as done)")
def test_cuda_half_precision_blur_stays_close(plain):
    image = rgb("two_people.jpg")
    faces = plain.detector([image])[0]
    cpu = methods.create("blur")(image, faces)
    acc = TorchRegionMethods("blur", device="cuda", half=True)(image, faces)
    _changed_inside_only(image, acc.image, acc.regions)
    assert np.abs(acc.image.astype(int) - cpu.image.astype(int)).max() <= 3
