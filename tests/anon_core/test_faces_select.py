"""``Faces.select`` keeps every per-face field in step, ``extras['reliable']`` included."""

import numpy as np

from faceveil.anon_core.faces import Faces


def _faces(n: int) -> Faces:
    boxes = np.array([[10 * i, 0, 10 * i + 8, 8, 0.9] for i in range(n)], np.float32)
    return Faces(
        boxes,
        np.zeros((n, 10), np.float32),
        landmarks68=np.arange(n * 136, dtype=np.float32).reshape(n, 68, 2),
        extras={"reliable": np.array([True, False, True])[:n], "embedder": "dlib_resnet"},
    )


def test_select_picks_the_reliability_of_the_faces_it_keeps():
    """Before, ``extras`` was copied whole: the mask fallback of a surrogate got the flags of
    all faces, three flags for two faces."""
    faces = _faces(3)
    kept = faces.select(np.array([1, 2]))
    assert kept.extras["reliable"].tolist() == [False, True]
    assert kept.extras["embedder"] == "dlib_resnet"
    assert np.array_equal(kept.landmarks68, faces.landmarks68[1:])
    by_mask = faces.select(np.array([True, False, True]))
    assert by_mask.extras["reliable"].tolist() == [True, True]
    assert faces.extras["reliable"].tolist() == [True, False, True]  # the original is untouched


def test_select_leaves_extras_that_describe_all_faces():
    """Only ``PER_FACE_EXTRAS`` are picked: an array that happens to have one entry per face
    but describes the image stays whole."""
    faces = _faces(3)
    faces.extras["image_mean"] = np.array([1.0, 2.0, 3.0])  # an RGB mean, not per face
    assert faces.select(np.array([0])).extras["image_mean"].tolist() == [1.0, 2.0, 3.0]


def test_select_of_nothing_keeps_empty_flags():
    kept = _faces(3).select(np.zeros(0, np.int64))
    assert len(kept) == 0 and kept.extras["reliable"].shape == (0,)
