"""The prepare stage on hand-made videos whose face boxes are known, plus every kind of bad input."""
from fractions import Fraction

import av
import numpy as np
import pandas as pd
import pytest

from pipeline.config import PrepareParams
from pipeline.prepare import PrepareError, prepare, sample_frames, summarize
from pipeline.store import RAW_INDEX, PreparedStore
from pipeline.split import SplitError, split_identities
from pipeline.video import write_video

PARAMS = PrepareParams(size=32, min_frames=4, train_frames=5, eval_frames=8, workers=1, mask_dilation=0.05)
TEST_FRACTION = 0.5


def _face_video(folder, name, n=12, hw=(64, 80), box_at=lambda t: (20 + t, 16, 44 + t, 40), gray=False):
    """A 'face' (a filled box with dark eye and mouth blobs) moving through the frame, plus its truth npz."""
    frames = np.full((n, *hw, 3), (40, 90, 160), np.uint8)
    boxes, lms = [], []
    for t in range(n):
        x0, y0, x1, y1 = box_at(t)
        frames[t, y0:y1, x0:x1] = (220, 180, 150)
        frames[t, y0 + 6 : y0 + 9, x0 + 5 : x0 + 9] = 20
        frames[t, y1 - 8 : y1 - 5, x0 + 8 : x1 - 8] = 20
        boxes.append((x0, y0, x1, y1))
        rng = np.random.default_rng(t)
        lms.append(np.stack([rng.uniform(x0 + 2, x1 - 2, 68), rng.uniform(y0 + 2, y1 - 2, 68)], 1))
    if gray:
        frames[:] = frames.mean(-1, keepdims=True).astype(np.uint8)
    video = folder / f"{name}.mp4"
    write_video(video, frames, fps=25)
    truth = folder / f"{name}.npz"
    np.savez(truth, bbox=np.asarray(boxes, np.float32), landmarks=np.asarray(lms, np.float32),
             expression=np.zeros((n, 7), np.float32), pose=np.stack([np.arange(n), -np.arange(n), np.zeros(n)], 1).astype(np.float32),
             gaze=np.zeros((n, 2), np.float32), identity_vector=np.zeros(4, np.float32))
    return video.name, truth.name


def _index(folder, rows):
    table = pd.DataFrame(rows, columns=["path", "identity", "clip", "kind", "motion_from", "truth"])
    table.to_csv(folder / RAW_INDEX, index=False)
    return folder  # the raw folder, as `prepare` takes it


@pytest.fixture
def world(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = []
    for ident in ("a", "b", "c", "d"):
        for c in range(2):
            video, truth = _face_video(raw, f"{ident}{c}", n=12 + 2 * c)
            rows.append([video, ident, f"{ident}{c}", "clip", "", truth])
    return raw, rows


def test_split_is_identity_disjoint_deterministic_and_two_sided():
    ids = [f"id{i:02d}" for i in range(10)]
    split = split_identities(ids, 0.2, seed=3)
    assert split == split_identities(list(reversed(ids)), 0.2, seed=3)
    assert sum(v == "test" for v in split.values()) == 2
    assert split != split_identities(ids, 0.2, seed=4)
    assert set(split_identities(ids[:2], 0.01, seed=0).values()) == {"train", "test"}
    with pytest.raises(SplitError, match="at least 2 identities"):
        split_identities(["solo"], 0.2, seed=0)


def test_sampling_train_random_sorted_eval_first_n():
    rng = np.random.default_rng(0)
    train = sample_frames(100, "train", PARAMS, rng)
    assert len(train) == 5 and (np.diff(train) > 0).all() and train.max() < 100
    assert list(sample_frames(100, "test", PARAMS, rng)) == list(range(8))
    assert list(sample_frames(3, "train", PARAMS, rng)) == [0, 1, 2]


def test_prepare_crops_follow_the_known_boxes(world, tmp_path):
    raw, rows = world
    manifest, outcomes = prepare(_index(raw, rows), tmp_path / "prepared", PARAMS, seed=0, test_fraction=TEST_FRACTION,
                                 landmarks_model=None, progress=False)
    assert all(o.status == "kept" for o in outcomes)
    assert len(manifest) == 8 and set(manifest["split"]) == {"train", "test"}
    for ident, group in manifest.groupby("identity"):  # identity-disjoint
        assert group["split"].nunique() == 1
    rec = manifest.iloc[0]
    folder = tmp_path / "prepared" / "clips" / rec["clip_id"]
    frames = np.load(folder / "frames.npy", mmap_mode="r")
    lms, masks, index = (np.load(folder / f) for f in ("landmarks.npy", "masks.npy", "frame_index.npy"))
    assert frames.shape[1:] == (32, 32, 3) and frames.dtype == np.uint8
    assert len(frames) == len(lms) == len(masks) == len(index) == rec["stored_frames"]
    # the union box of a 24 px face drifting 11-13 px, enlarged by 10 % and squared
    side = rec["x1"] - rec["x0"]
    assert side == rec["y1"] - rec["y0"] and 30 <= side <= 48
    # landmarks were drawn inside the face box, so in crop coordinates they stay inside the crop
    assert (lms >= 0).all() and (lms < 32).all()
    # the crop shows skin where the face is: centre pixel is skin-coloured, not background blue
    assert frames[0, 16, 16, 0] > 150
    assert 0 < masks.mean() < 1
    metrics = summarize(manifest, outcomes, PreparedStore(tmp_path / "prepared"))
    assert metrics["videos"] == {"total": 8, "kept": 8, "rejected": 0, "skipped": 0}
    assert metrics["frames"]["train"] + metrics["frames"]["test"] == manifest["stored_frames"].sum()


def test_prepare_is_deterministic(world, tmp_path):
    raw, rows = world
    index = _index(raw, rows)
    m1, _ = prepare(index, tmp_path / "p1", PARAMS, seed=7, test_fraction=TEST_FRACTION, landmarks_model=None, progress=False)
    m2, _ = prepare(index, tmp_path / "p2", PARAMS, seed=7, test_fraction=TEST_FRACTION, landmarks_model=None, progress=False)
    pd.testing.assert_frame_equal(m1, m2)
    for cid in m1["clip_id"]:
        a = np.load(tmp_path / "p1" / "clips" / cid / "frame_index.npy")
        assert (a == np.load(tmp_path / "p2" / "clips" / cid / "frame_index.npy")).all()


def _write_vfr(path, n=20):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 80, 64, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for k in range(n):
            frame = np.full((64, 80, 3), (40, 90, 160), np.uint8)
            frame[16:40, 20:44] = (220, 180, 150)
            f = av.VideoFrame.from_ndarray(frame, format="rgb24")
            f.pts, f.time_base = k * 40 + 60 * (k // 3), Fraction(1, 1000)  # every third interval 100 ms
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _write_odd(path, n=12):
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)  # lossless, accepts odd sizes
        s.width, s.height, s.pix_fmt = 81, 63, "yuv444p"
        for _ in range(n):
            frame = np.full((63, 81, 3), (40, 90, 160), np.uint8)
            frame[16:40, 20:44] = (220, 180, 150)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_bad_inputs_get_reasons_and_the_rest_is_prepared(world, tmp_path):
    raw, rows = world
    (raw / "corrupt.mp4").write_bytes(b"\x00garbage" * 200)
    np.savez(raw / "stub.npz", bbox=np.zeros((12, 4), np.float32))
    rows.append(["corrupt.mp4", "e", "corrupt", "clip", "", "stub.npz"])
    gray, gray_truth = _face_video(raw, "gray", gray=True)
    rows.append([gray, "e", "gray", "clip", "", gray_truth])
    # a face present in only 3 frames: a track shorter than min_frames
    short, short_truth = _face_video(raw, "short", n=12)
    truth = dict(np.load(raw / short_truth))
    truth["bbox"] = truth["bbox"][:3]
    np.savez(raw / short_truth, **truth)
    rows.append([short, "e", "short", "clip", "", short_truth])
    # no face anywhere: the truth has no boxes
    noface, noface_truth = _face_video(raw, "noface", n=6)
    truth = dict(np.load(raw / noface_truth))
    truth["bbox"] = truth["bbox"][:0]
    np.savez(raw / noface_truth, **truth)
    rows.append([noface, "e", "noface", "clip", "", noface_truth])
    # a real-looking video with no renderer truth while the detector is forced to ground truth
    rows.append([gray, "e", "real", "clip", "", ""])
    # kept with notes: variable frame rate, odd frame size (truth reused from a 12+ frame clip)
    _write_vfr(raw / "vfr.mkv")
    vfr_truth = dict(np.load(raw / "a1.npz"))
    vfr_truth["bbox"] = np.tile(np.array([[20, 16, 44, 40]], np.float32), (20, 1))
    vfr_truth["landmarks"] = np.tile(vfr_truth["landmarks"][:1], (20, 1, 1))
    np.savez(raw / "vfr.npz", **vfr_truth)
    rows.append(["vfr.mkv", "f", "vfr", "clip", "", "vfr.npz"])
    _write_odd(raw / "odd.mkv")
    rows.append(["odd.mkv", "f", "odd", "clip", "", "a0.npz"])

    params = PARAMS.model_copy(update={"detector": "ground_truth"})
    manifest, outcomes = prepare(_index(raw, rows), tmp_path / "prepared", params, seed=0, test_fraction=TEST_FRACTION,
                                 landmarks_model=None, progress=False)
    by_clip = {o.clip: o for o in outcomes}
    assert by_clip["corrupt"].reason_kind == "unreadable" and "corrupt.mp4" in by_clip["corrupt"].reason
    assert by_clip["gray"].reason_kind == "grayscale"
    assert by_clip["short"].reason_kind == "short_tracks" and "longest: frames 0-2" in by_clip["short"].reason
    assert by_clip["noface"].reason_kind == "no_face"
    assert by_clip["real"].reason_kind == "no_truth"
    assert by_clip["vfr"].status == "kept" and "variable frame rate" in by_clip["vfr"].notes[0]
    assert by_clip["odd"].status == "kept" and "odd frame size 81x63" in by_clip["odd"].notes[0]
    assert set(manifest["clip"]) == {r[2] for r in rows[:8]} | {"vfr", "odd"}
    metrics = summarize(manifest, outcomes, PreparedStore(tmp_path / "prepared"))
    assert metrics["reasons"] == {"unreadable": 1, "grayscale": 1, "short_tracks": 1, "no_face": 1, "no_truth": 1}
    assert set(metrics["rejected"]) == {by_clip[c].video for c in ("corrupt", "gray", "short", "noface", "real")}


def test_nothing_usable_fails_clearly_and_leaves_no_output(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "x.mp4").write_bytes(b"junk")
    (raw / "y.mp4").write_bytes(b"junk")
    index = _index(raw, [["x.mp4", "p", "x", "clip", "", "t.npz"], ["y.mp4", "q", "y", "clip", "", "t.npz"]])
    np.savez(raw / "t.npz", bbox=np.zeros((1, 4), np.float32))
    with pytest.raises(PrepareError, match=r"nothing usable(.|\n)*x.mp4: .*corrupt"):
        prepare(index, tmp_path / "prepared", PARAMS, seed=0, test_fraction=TEST_FRACTION, landmarks_model=None,
                progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_cross_renders_are_kept_only_inside_the_test_split(world, tmp_path):
    raw, rows = world
    split = split_identities(["a", "b", "c", "d"], TEST_FRACTION, seed=0)
    test_ids = sorted(i for i, s in split.items() if s == "test")
    train_ids = sorted(i for i, s in split.items() if s == "train")
    video, truth = _face_video(raw, "cross_in", n=12)
    rows.append([video, test_ids[0], "cross_in", "cross", f"{test_ids[1]}0", truth])
    video, truth = _face_video(raw, "cross_out", n=12)
    rows.append([video, test_ids[0], "cross_out", "cross", f"{train_ids[0]}0", truth])
    manifest, outcomes = prepare(_index(raw, rows), tmp_path / "prepared", PARAMS, seed=0, test_fraction=TEST_FRACTION,
                                 landmarks_model=None, progress=False)
    cross = manifest[manifest["kind"] == "cross"]
    assert list(cross["clip"]) == ["cross_in"] and list(cross["split"]) == ["test"]
    assert {o.clip: o.status for o in outcomes}["cross_out"] == "skipped"


def test_load_split_returns_the_truth_of_the_stored_frames(world, tmp_path):
    from pipeline.store import load_split

    raw, rows = world
    prepare(_index(raw, rows), tmp_path / "prepared", PARAMS, seed=0, test_fraction=TEST_FRACTION,
            landmarks_model=None, progress=False)
    for split in ("train", "test"):
        data = load_split(tmp_path / "prepared", split, with_truth=True)
        stored = np.concatenate([PreparedStore(tmp_path / "prepared").frame_index(c) for c in dict.fromkeys(data.clip_ids)])
        assert {k: v.shape for k, v in data.truth.items()} == {"expression": (len(data), 7), "pose": (len(data), 3),
                                                               "gaze": (len(data), 2)}
        assert np.array_equal(data.truth["pose"][:, 0], stored)  # the pose's yaw was the frame number
        assert load_split(tmp_path / "prepared", split).truth is None

