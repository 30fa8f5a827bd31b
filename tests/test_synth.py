"""The synthetic talking-head world: determinism, truth consistency, expression effects, files on disk."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.synth import (
    EXPRESSION_NAMES,
    GAZE_NAMES,
    IDENTITY_NAMES,
    POSE_NAMES,
    Identity,
    Motion,
    generate_world,
    render_clip,
    sample_identity,
    sample_motion,
)
from pipeline.synth.motion import center_margin
from pipeline.video import read_video

RES = 128
TRUTH_KEYS = {"landmarks", "bbox", "expression", "pose", "gaze", "center", "scale", "identity_vector"}


def plain_identity(seed: int = 3, **overrides: float) -> Identity:
    """A sampled identity without glasses or beard (unless overridden)."""
    params = sample_identity(np.random.default_rng(seed), f"id{seed:04d}").as_dict()
    params.update({"glasses": 0.0, "beard": 0.0, **overrides})
    return Identity.from_dict(f"id{seed:04d}", params)


def still(identity: Identity, **channels: float) -> tuple[np.ndarray, dict]:
    frames, truth = render_clip(identity, Motion.static(1, scale=0.5, **channels), RES)
    return frames[0], {k: v[0] if v.ndim > 1 and k not in ("identity_vector",) else v for k, v in truth.items()}


def eye_aspect_ratio(lm: np.ndarray, first: int) -> float:
    p = lm[first : first + 6]
    vertical = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
    return float(vertical / (2.0 * np.linalg.norm(p[0] - p[3])))


def box_of(points: np.ndarray, pad: float) -> tuple[slice, slice]:
    x0, y0 = np.floor(points.min(0) - pad).astype(int)
    x1, y1 = np.ceil(points.max(0) + pad).astype(int)
    return slice(max(y0, 0), y1 + 1), slice(max(x0, 0), x1 + 1)


def white_pixels(image: np.ndarray) -> int:
    img = image.astype(int)
    return int(((img.min(-1) > 170) & (img.max(-1) - img.min(-1) < 30)).sum())


def luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(float) @ np.array([0.299, 0.587, 0.114])


# ------------------------------------------------------------------------------------------------ API
def test_names_and_dataclasses():
    assert EXPRESSION_NAMES == ("mouth_open", "smile", "pucker", "brow_raise", "brow_frown", "blink_left", "blink_right")
    assert POSE_NAMES == ("yaw", "pitch", "roll") and GAZE_NAMES == ("gaze_yaw", "gaze_pitch")
    for name in ("face_width", "face_height", "jaw_width", "jaw_roundness", "eye_spacing", "eye_size", "nose_length",
                 "nose_width", "lip_width", "lip_thickness", "brow_height", "brow_thickness", "skin_r", "hair_g",
                 "iris_b", "hair_style", "hair_volume", "background_r", "glasses", "beard"):
        assert name in IDENTITY_NAMES
    identity = sample_identity(np.random.default_rng(0), "id0007")
    assert identity.id == "id0007"
    assert identity.vector.dtype == np.float32 and identity.vector.shape == (len(IDENTITY_NAMES),)
    assert list(identity.as_dict()) == list(IDENTITY_NAMES)
    motion = sample_motion(np.random.default_rng(0), 30, 25.0)
    assert motion.expression.shape == (30, 7) and motion.pose.shape == (30, 3) and motion.gaze.shape == (30, 2)
    assert motion.center.shape == (30, 2) and motion.scale.shape == (30,)
    assert all(a.dtype == np.float32 for a in motion.as_dict().values())


def test_render_shapes_and_dtypes():
    identity = sample_identity(np.random.default_rng(1), "id0001")
    motion = sample_motion(np.random.default_rng(2), 6, 25.0)
    frames, truth = render_clip(identity, motion, 64)
    assert frames.dtype == np.uint8 and frames.shape == (6, 64, 64, 3)
    assert set(truth) == TRUTH_KEYS
    assert all(v.dtype == np.float32 for v in truth.values())
    assert truth["landmarks"].shape == (6, 68, 2) and truth["bbox"].shape == (6, 4)
    assert truth["identity_vector"].shape == (len(IDENTITY_NAMES),)
    for key in ("expression", "pose", "gaze", "center", "scale"):
        np.testing.assert_array_equal(truth[key], getattr(motion, key))
    assert frames.std() > 10  # not a blank image
    with pytest.raises(ValueError):
        render_clip(identity, motion, 63)


# ------------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_everything_different_seed_different():
    def make(seed):
        identity = sample_identity(np.random.default_rng(seed), "id0000")
        motion = sample_motion(np.random.default_rng(seed + 100), 8, 25.0)
        return identity, motion, *render_clip(identity, motion, 64)

    a, b, c = make(5), make(5), make(6)
    np.testing.assert_array_equal(a[0].vector, b[0].vector)
    np.testing.assert_array_equal(a[2], b[2])
    for key in TRUTH_KEYS:
        np.testing.assert_array_equal(a[3][key], b[3][key])
    assert not np.array_equal(a[0].vector, c[0].vector)
    assert not np.array_equal(a[1].expression, c[1].expression)
    assert np.abs(a[2].astype(int) - c[2].astype(int)).mean() > 5


# ------------------------------------------------------------------------------------------------ truth
def test_landmarks_inside_frame_and_bbox():
    for i in range(8):
        identity = sample_identity(np.random.default_rng([11, i]), f"id{i:04d}")
        motion = sample_motion(np.random.default_rng([12, i]), 48, 25.0)
        _, truth = render_clip(identity, motion[::4], 64)
        lm, bbox = truth["landmarks"], truth["bbox"]
        assert lm.min() >= 0 and lm.max() <= 63
        assert (bbox[:, :2] >= 0).all() and (bbox[:, 2:] <= 63).all()
        assert (lm[..., 0] >= bbox[:, None, 0] - 1e-4).all() and (lm[..., 0] <= bbox[:, None, 2] + 1e-4).all()
        assert (lm[..., 1] >= bbox[:, None, 1] - 1e-4).all() and (lm[..., 1] <= bbox[:, None, 3] + 1e-4).all()
        # the box reaches above the brows (forehead up to the hairline)
        assert (bbox[:, 1] < lm[:, 17:27, 1].min(1) - 2).all()


def test_extreme_motion_stays_in_frame():
    identity = plain_identity(4, face_height=1.0, face_width=1.0, nose_length=1.0)
    scale = 0.57
    mx, my = center_margin(scale)
    corners = [(0.5 + sx * mx, 0.5 + sy * my) for sx in (-1, 1) for sy in (-1, 1)]
    for center in corners:
        for yaw, pitch, roll in ((30, 20, 15), (-30, -20, -15), (30, -20, 15), (-30, 20, -15)):
            motion = Motion.static(1, center=center, scale=scale, yaw=yaw, pitch=pitch, roll=roll, mouth_open=1.0)
            lm = render_clip(identity, motion, 64)[1]["landmarks"]
            assert lm.min() >= 0 and lm.max() <= 63, (center, yaw, pitch, roll)


def test_sampled_motion_ranges_and_smoothness():
    motion = sample_motion(np.random.default_rng(3), 2500, 25.0)  # 100 s
    e = motion.expression
    assert e.min() >= 0 and e.max() <= 1
    assert (np.abs(motion.pose) <= [30, 20, 15]).all() and (np.abs(motion.gaze) <= 20).all()
    assert (motion.scale >= 0.38).all() and (motion.scale <= 0.57).all()
    assert (motion.center > 0.1).all() and (motion.center < 0.9).all()
    assert np.abs(np.diff(motion.pose, axis=0)).max() < 4.0  # degrees per frame: slow sway
    assert np.abs(np.diff(motion.scale)).max() < 0.005
    # talking: openings at 3-5 Hz with pauses; blinks every few seconds; every channel is used
    opening = (e[:, 0] > 0.3).astype(int)
    onsets = (np.diff(opening) == 1).sum()
    assert 100 < onsets < 500, onsets
    assert (e[:, 0] < 0.05).mean() > 0.1
    blinks = (np.diff((e[:, 5] > 0.5).astype(int)) == 1).sum()
    assert 10 < blinks < 60, blinks
    assert (e.max(0) > 0.5).all()
    assert np.corrcoef(e[:, 5], e[:, 6])[0, 1] > 0.7  # both eyes blink together mostly


def test_identity_sampling_variety():
    ids = [sample_identity(np.random.default_rng([9, i]), f"id{i:04d}") for i in range(300)]
    table = np.stack([i.vector for i in ids])
    col = {n: table[:, k] for k, n in enumerate(IDENTITY_NAMES)}
    assert 0.12 < col["glasses"].mean() < 0.28 and 0.12 < col["beard"].mean() < 0.28
    assert set(np.unique(col["hair_style"])) == {0.0, 1.0, 2.0, 3.0}
    for prefix in ("skin", "hair", "iris", "background"):
        rgb = np.stack([col[f"{prefix}_{c}"] for c in "rgb"], 1)
        assert rgb.min() >= 0 and rgb.max() <= 1
        assert np.ptp(rgb.mean(1)) > 0.4, prefix  # wide brightness range
    shape = table[:, : IDENTITY_NAMES.index("skin_r")]
    assert shape.min() >= -1 and shape.max() <= 1 and shape.std(0).min() > 0.4


# ------------------------------------------------------------------------------------------------ expressions
def test_blink_closes_the_eye():
    identity = plain_identity()
    open_img, open_t = still(identity)
    shut_img, shut_t = still(identity, blink_left=1.0)
    assert eye_aspect_ratio(open_t["landmarks"], 36) > 0.25
    assert eye_aspect_ratio(shut_t["landmarks"], 36) < 0.05
    assert eye_aspect_ratio(shut_t["landmarks"], 42) == pytest.approx(eye_aspect_ratio(open_t["landmarks"], 42), abs=1e-4)
    region = box_of(open_t["landmarks"][36:42], pad=2)
    assert white_pixels(open_img[region]) >= 15
    assert white_pixels(shut_img[region]) < 0.2 * white_pixels(open_img[region])
    other = box_of(open_t["landmarks"][42:48], pad=2)
    assert white_pixels(shut_img[other]) > 0.8 * white_pixels(open_img[other])  # the right eye stays open


def test_mouth_open_separates_lips_and_darkens_mouth():
    identity = plain_identity()
    shut_img, shut_t = still(identity)
    open_img, open_t = still(identity, mouth_open=1.0)
    gap = lambda lm: float(lm[66, 1] - lm[62, 1])  # noqa: E731
    assert gap(shut_t["landmarks"]) < 0.5
    assert gap(open_t["landmarks"]) > 8.0  # pixels at 128 px, face height 64 px
    region = box_of(open_t["landmarks"][60:68], pad=0)
    assert luminance(open_img[region]).mean() < luminance(shut_img[region]).mean() - 25
    assert (luminance(open_img[region]) < 50).sum() >= 20  # a dark interior


def test_yaw_moves_the_nose_tip():
    identity = plain_identity()
    _, front = still(identity)
    _, right = still(identity, yaw=25.0)
    _, left = still(identity, yaw=-25.0)
    centre = lambda lm: lm[[0, 16], 0].mean()  # noqa: E731 (jaw ends: stay put, the nose swings)
    assert right["landmarks"][30, 0] - front["landmarks"][30, 0] > 3
    assert left["landmarks"][30, 0] - front["landmarks"][30, 0] < -3
    assert right["landmarks"][30, 0] - centre(right["landmarks"]) > front["landmarks"][30, 0] - centre(front["landmarks"]) + 3


def test_gaze_moves_the_pupils():
    identity = plain_identity()

    def pupil_x(**gaze):
        img, t = still(identity, **gaze)
        region = box_of(t["landmarks"][42:48], pad=0)
        dark = luminance(img[region]) < 40
        assert dark.sum() >= 4
        return float(np.nonzero(dark)[1].mean())

    assert pupil_x(gaze_yaw=20.0) - pupil_x(gaze_yaw=-20.0) > 3


def test_brows_raise_and_frown():
    identity = plain_identity()
    _, neutral = still(identity)
    _, raised = still(identity, brow_raise=1.0)
    _, frown = still(identity, brow_frown=1.0)
    brow_y = lambda t: t["landmarks"][17:27, 1].mean()  # noqa: E731
    assert brow_y(raised) < brow_y(neutral) - 2
    inner_gap = lambda t: t["landmarks"][22, 0] - t["landmarks"][21, 0]  # noqa: E731
    assert inner_gap(frown) < inner_gap(neutral) - 1


# ------------------------------------------------------------------------------------------------ world on disk
def _read_index(root: Path) -> list[dict]:
    with open(root / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_generate_world_tiny(tmp_path):
    out = tmp_path / "world"
    summary = generate_world(out, seed=1, n_identities=2, clips_per_identity=1, frames_per_clip=8, resolution=64,
                             fps=25.0, cross_per_clip=1)
    assert summary["identities"] == 2 and summary["clips"] == 2 and summary["cross_clips"] == 2
    assert summary["frames"] == 32 and summary["frames_per_second"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no temporary folders left behind
    identities = json.loads((out / "identities.json").read_text())
    assert sorted(identities) == ["id0000", "id0001"] and list(identities["id0000"]) == list(IDENTITY_NAMES)
    rows = _read_index(out)
    with open(out / "index.csv", newline="") as f:
        assert next(csv.reader(f)) == ["path", "identity", "clip", "kind", "motion_from", "truth", "fps", "n_frames"]
    assert len(rows) == 4 and sorted(r["kind"] for r in rows) == ["clip", "clip", "cross", "cross"]
    assert {r["clip"] for r in rows} == {"id0000_c00", "id0001_c00", "id0001_x_id0000_c00", "id0000_x_id0001_c00"}
    for row in rows:
        assert row["path"] == f"videos/{row['identity']}/{row['clip']}.mp4"
        frames, info = read_video(out / row["path"])
        assert frames.shape == (8, 64, 64, 3) and int(row["n_frames"]) == 8 and float(row["fps"]) == 25.0
        truth = np.load(out / row["truth"])
        assert TRUTH_KEYS | {"identity_id", "motion_from"} <= set(truth.files)
        assert str(truth["identity_id"]) == row["identity"] and str(truth["motion_from"]) == row["motion_from"]
        assert truth["landmarks"].shape == (8, 68, 2)
        np.testing.assert_array_equal(truth["identity_vector"], np.array(list(identities[row["identity"]].values()), np.float32))
        if row["kind"] == "clip":
            assert row["motion_from"] == row["clip"]
    # the encoded video matches the render (lossy, but close)
    row = rows[0]
    identity = Identity.from_dict(row["identity"], identities[row["identity"]])
    truth = np.load(out / row["truth"])
    motion = Motion(*(truth[k] for k in ("expression", "pose", "gaze", "center", "scale")))
    rendered, _ = render_clip(identity, motion, 64)
    assert np.abs(read_video(out / row["path"])[0].astype(int) - rendered).mean() < 6


def test_cross_render_has_the_source_motion(tmp_path):
    out = tmp_path / "world"
    generate_world(out, seed=2, n_identities=3, clips_per_identity=1, frames_per_clip=6, resolution=64, fps=25.0,
                   cross_per_clip=2)
    rows = _read_index(out)
    crosses = [r for r in rows if r["kind"] == "cross"]
    assert len(crosses) == 6
    by_clip = {r["clip"]: r for r in rows}
    for cross in crosses:
        source = by_clip[cross["motion_from"]]
        assert source["kind"] == "clip" and cross["identity"] != source["identity"]
        assert cross["clip"] == f"{cross['identity']}_x_{source['clip']}"
        a, b = np.load(out / cross["truth"]), np.load(out / source["truth"])
        for key in ("expression", "pose", "gaze", "center", "scale"):
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a["identity_vector"], b["identity_vector"])
        assert np.abs(a["landmarks"] - b["landmarks"]).max() > 0.5  # a different face shape
        fa, fb = read_video(out / cross["path"])[0], read_video(out / source["path"])[0]
        assert np.abs(fa.astype(int) - fb.astype(int)).mean() > 5


def test_world_deterministic_and_stable_when_growing(tmp_path):
    kwargs = dict(clips_per_identity=1, frames_per_clip=3, resolution=32, fps=25.0, cross_per_clip=0)
    generate_world(tmp_path / "a", seed=4, n_identities=2, **kwargs)
    generate_world(tmp_path / "b", seed=4, n_identities=3, **kwargs)
    generate_world(tmp_path / "c", seed=5, n_identities=2, **kwargs)
    ids = {k: json.loads((tmp_path / k / "identities.json").read_text()) for k in "abc"}
    assert ids["b"]["id0000"] == ids["a"]["id0000"] and ids["b"]["id0001"] == ids["a"]["id0001"]
    assert ids["c"]["id0000"] != ids["a"]["id0000"]
    for clip in ("id0000_c00", "id0001_c00"):
        a, b = np.load(tmp_path / "a" / "truth" / f"{clip}.npz"), np.load(tmp_path / "b" / "truth" / f"{clip}.npz")
        np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
        np.testing.assert_array_equal(a["expression"], b["expression"])
    with pytest.raises(ValueError):
        generate_world(tmp_path / "d", seed=4, n_identities=1, **{**kwargs, "cross_per_clip": 1})


def test_world_folder_is_byte_identical_across_runs_and_worker_counts(tmp_path):
    """`data/raw` must hash the same every time the stage runs on the same params (DVC reproducibility)."""
    import filecmp

    for name, workers in (("a", 1), ("b", 2)):
        generate_world(tmp_path / name, seed=5, n_identities=3, clips_per_identity=1, frames_per_clip=12,
                       resolution=64, fps=25, cross_per_clip=1, workers=workers)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 6
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", [str(f) for f in files], shallow=False)
    assert not mismatch and not errors, mismatch
