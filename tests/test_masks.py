import numpy as np
from scipy.spatial import ConvexHull
from skimage.draw import polygon2mask
from skimage.morphology import dilation, disk

from pipeline.masks import CLOSED_REGIONS, OPEN_REGIONS, feature_mask, feature_masks


def _far_landmarks() -> np.ndarray:
    """All 68 points parked at one far corner pixel, except those a test moves."""
    return np.full((68, 2), 60.0)


def test_regions_are_the_design_indices():
    closed = sorted(i for r in CLOSED_REGIONS.values() for i in r)
    open_ = sorted(i for r in OPEN_REGIONS.values() for i in r)
    assert closed == list(range(36, 48)) + list(range(48, 60))
    assert open_ == list(range(17, 27))


def test_undilated_mouth_is_its_polygon():
    lm = _far_landmarks()
    # mouth outer contour 48-59: an axis-aligned rectangle 10..30 x 20..28 traced with 12 points
    xs = [10, 15, 20, 25, 30, 30, 30, 25, 20, 15, 10, 10]
    ys = [20, 20, 20, 20, 20, 24, 28, 28, 28, 28, 28, 24]
    lm[48:60] = np.stack([xs, ys], 1)
    mask = feature_mask(lm, 64, dilation=0)
    expected = np.zeros((64, 64), bool)
    expected[20:29, 10:31] = True
    expected[60, 60] = True  # the parked points
    assert (mask == expected).all()


def test_dilation_equals_morphological_dilation_with_a_disc():
    rng = np.random.default_rng(0)
    lm = rng.uniform(12, 52, size=(68, 2))
    base = feature_mask(lm, 64, dilation=0)
    for radius in (1, 3, 5):
        ours = feature_mask(lm, 64, dilation=radius)
        reference = dilation(base, disk(radius)).astype(bool)
        assert (ours == reference).all(), radius


def test_eye_mask_contains_its_convex_hull_and_is_empty_far_away():
    lm = _far_landmarks()
    eye = np.array([[20, 30], [24, 27], [30, 27], [34, 30], [30, 33], [24, 33]], float)
    lm[36:42] = eye
    mask = feature_mask(lm, 64, dilation=2)
    hull = eye[ConvexHull(eye).vertices]
    inside = polygon2mask((64, 64), hull[:, ::-1])
    assert mask[inside].all()
    assert not mask[:10, :10].any()
    # a point 2 px beyond the eye's right corner is in, 4 px beyond is out
    assert mask[30, 36] and not mask[30, 38]


def test_batch_shape_and_dtype():
    lm = np.random.default_rng(1).uniform(5, 27, size=(3, 68, 2))
    masks = feature_masks(lm, 32, 1.5)
    assert masks.shape == (3, 32, 32) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
