"""Unit tests of the FOMM crop algorithm (pipeline.crop) on synthetic boxes, images and tiny videos."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from pipeline.crop import (
    Track,
    box_iou,
    crop_and_resize,
    crop_command_inputs,
    crop_tracks,
    crop_videos,
    enlarge_box,
    find_tracks,
    from_crop_coords,
    square_crop_box,
    to_crop_coords,
    track_faces,
)
from pipeline.video import read_video, write_video

EMPTY = np.zeros((0, 4))


def box(x0, y0, w, h):
    return np.array([[x0, y0, x0 + w, y0 + h]], dtype=float)


def spans(tracks: list[Track]):
    return [(t.start, t.end) for t in tracks]


# ------------------------------------------------------------------------------------------------ IoU


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),  # half shifted: 50 / (100 + 100 - 50)
        ([0, 0, 10, 10], [0, 0, 5, 5], 25 / 100),  # contained quarter
        ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175),  # corner overlap
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
        ([0, 0, 10, 10], [30, 30, 40, 40], 0.0),  # disjoint
        ([0, 0, 0, 10], [0, 0, 0, 10], 0.0),  # zero area
        ([0, 0, 4, 2], [2, 0, 6, 4], 4 / 20),  # inter 2x2 = 4, areas 8 + 16
    ],
)
def test_box_iou_hand_computed(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------- tracking


def test_slowly_moving_face_is_one_track():
    # 1 px per frame for 60 frames: IoU with the first box at frame 59 is 41*100 / (2*100*100 - 4100) = 0.258
    frames = [box(i, 50, 100, 100) for i in range(60)]
    tracks = track_faces(frames)
    assert spans(tracks) == [(0, 59)]
    t = tracks[0]
    np.testing.assert_allclose(t.first_box, [0, 50, 100, 150])
    np.testing.assert_allclose(t.union_box, [0, 50, 159, 150])
    assert sorted(t.boxes) == list(range(60))
    np.testing.assert_allclose(t.boxes[30], [30, 50, 130, 150])


def test_face_matched_against_first_box_not_previous():
    # 2 px per frame: consecutive boxes overlap heavily, but by frame 40 IoU with the FIRST box is 20/180 < 0.25
    frames = [box(2 * i, 0, 100, 100) for i in range(60)]
    tracks = track_faces(frames)
    assert len(tracks) == 2
    # first frame where IoU(first, box) <= 0.25: (100 - d) / (100 + d) <= 0.25  <=>  d >= 60, i.e. frame 30
    assert spans(tracks)[0] == (0, 29)
    assert tracks[1].start == 30
    np.testing.assert_allclose(tracks[1].first_box, [60, 0, 160, 100])


def test_jump_away_ends_track_and_starts_another_even_with_gap_tolerance():
    # the face jumps 80 px right: IoU with the first box is 20*100 / (2*100*100 - 2000) = 0.11, overlapping but
    # too little: the face moved away, so the track ends at once (not bridged as a detector miss)
    frames = [box(0, 0, 100, 100)] * 10 + [box(80, 0, 100, 100)] * 10
    assert box_iou(frames[0][0], frames[-1][0]) == pytest.approx(2000 / 18000)
    tracks = track_faces(frames, max_gap=5)
    assert spans(tracks) == [(0, 9), (10, 19)]
    np.testing.assert_allclose(tracks[0].union_box, [0, 0, 100, 100])
    np.testing.assert_allclose(tracks[1].union_box, [80, 0, 180, 100])


def test_face_moving_away_and_back_within_max_gap_is_not_bridged():
    # 3 frames at the jumped position, then back: bridging would crop frames 10-12 with a box that misses
    # most of the face, so the weak overlap ends the first track and the return starts a third one
    frames = [box(0, 0, 100, 100)] * 10 + [box(80, 0, 100, 100)] * 3 + [box(0, 0, 100, 100)] * 10
    assert spans(track_faces(frames, max_gap=5)) == [(0, 9), (10, 12), (13, 22)]
    # whereas a detector miss of the same length is bridged
    frames = [box(0, 0, 100, 100)] * 10 + [EMPTY] * 3 + [box(0, 0, 100, 100)] * 10
    assert spans(track_faces(frames, max_gap=5)) == [(0, 22)]


def test_two_faces_are_two_tracks_whatever_the_detection_order():
    left, right = box(10, 10, 50, 50)[0], box(200, 20, 60, 60)[0]
    frames = [np.stack([left, right] if i % 3 else [right, left]) + [i % 2, 0, i % 2, 0] for i in range(30)]
    tracks = track_faces(frames)
    assert spans(tracks) == [(0, 29), (0, 29)]
    assert len(tracks[0].boxes) == len(tracks[1].boxes) == 30
    unions = sorted(t.union_box.tolist() for t in tracks)
    np.testing.assert_allclose(unions[0], [10, 10, 61, 60])
    np.testing.assert_allclose(unions[1], [200, 20, 261, 80])


def test_gaps_up_to_max_gap_are_bridged():
    face = box(100, 100, 80, 80)
    frames = [face] * 10 + [EMPTY] * 5 + [face] * 15
    tracks = track_faces(frames, max_gap=5)
    assert spans(tracks) == [(0, 29)]
    assert sorted(tracks[0].boxes) == list(range(10)) + list(range(15, 30))  # the gap has no detections
    # a far-away detection (another face) during the gap does not touch the track's first box: still a gap
    frames = [face] * 10 + [box(400, 0, 50, 50)] * 5 + [face] * 15
    assert spans(track_faces(frames, max_gap=5)) == [(0, 29), (10, 14)]


def test_gaps_longer_than_max_gap_split_the_track():
    face = box(100, 100, 80, 80)
    frames = [face] * 10 + [EMPTY] * 6 + [face] * 15
    assert spans(track_faces(frames, max_gap=5)) == [(0, 9), (16, 30)]
    assert spans(track_faces(frames, max_gap=6)) == [(0, 30)]
    # a track that is never seen again ends at its last detection, not at the end of its tolerance
    assert spans(track_faces([face] * 10 + [EMPTY] * 3, max_gap=5)) == [(0, 9)]


def test_max_gap_zero_splits_at_any_miss():
    face = box(100, 100, 80, 80)
    frames = [face] * 10 + [EMPTY] + [face] * 15
    assert spans(track_faces(frames, max_gap=0)) == [(0, 9), (11, 25)]
    assert spans(track_faces(frames, max_gap=1)) == [(0, 25)]


def test_detections_of_one_frame_can_join_a_track_started_in_that_frame():
    # FOMM appends a new trajectory before the next detection of the same frame is assigned
    frames = [np.concatenate([box(0, 0, 100, 100), box(10, 0, 100, 100)])]
    tracks = track_faces(frames)
    assert len(tracks) == 1
    np.testing.assert_allclose(tracks[0].union_box, [0, 0, 110, 100])
    np.testing.assert_allclose(tracks[0].boxes[0], [0, 0, 110, 100])


def fomm_reference(boxes_per_frame, iou_with_initial=0.25):
    """FOMM crop-video.py's trajectory loop, transcribed from its description: [first, union, start, end]."""
    trajectories, finished = [], []
    for i, bboxes in enumerate(boxes_per_frame):
        valid = []
        for trajectory in trajectories:
            intersection = 0
            for bbox in bboxes:
                intersection = max(intersection, box_iou(trajectory[0], bbox))
            (valid if intersection > iou_with_initial else finished).append(trajectory)
        trajectories = valid
        for bbox in bboxes:
            intersection, current = 0, None
            for trajectory in trajectories:
                current_intersection = box_iou(trajectory[0], bbox)
                if intersection < current_intersection and current_intersection > iou_with_initial:
                    intersection, current = current_intersection, trajectory
            if current is None:
                trajectories.append([bbox, bbox, i, i])
            else:
                current[3] = i
                current[1] = np.concatenate([np.minimum(current[1][:2], bbox[:2]), np.maximum(current[1][2:], bbox[2:])])
    return finished + trajectories


def random_scene(rng, n_frames=120):
    """Up to three faces random-walking (sometimes jumping), with detector misses and spurious boxes."""
    faces = [np.array([rng.uniform(0, 400), rng.uniform(0, 300), s, s]) for s in rng.uniform(40, 120, rng.integers(1, 4))]
    frames = []
    for _ in range(n_frames):
        dets = []
        for f in faces:
            f[:2] += rng.normal(0, 4, 2) + (rng.random() < 0.03) * rng.normal(0, 60, 2)
            if rng.random() > 0.15:
                dets.append([f[0], f[1], f[0] + f[2], f[1] + f[3]])
        if rng.random() < 0.1:
            x, y, s = rng.uniform(0, 450), rng.uniform(0, 350), rng.uniform(30, 90)
            dets.append([x, y, x + s, y + s])
        frames.append(np.array(dets, dtype=float).reshape(-1, 4)[rng.permutation(len(dets))])
    return frames


@pytest.mark.parametrize("seed", range(8))
def test_max_gap_zero_is_fomm(seed):
    frames = random_scene(np.random.default_rng(seed))
    ours = track_faces(frames, max_gap=0)
    ref = fomm_reference(frames)
    key = lambda t: (t[2], tuple(np.round(t[0], 6)))
    ours_t = sorted(((t.first_box, t.union_box, t.start, t.end) for t in ours), key=key)
    ref_t = sorted(ref, key=key)
    assert len(ours_t) == len(ref_t) > 1
    for a, b in zip(ours_t, ref_t):
        assert a[2:] == tuple(b[2:])
        np.testing.assert_allclose(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1])
    # and the gap tolerance really changes something on such scenes (fewer, longer tracks)
    assert len(track_faces(frames, max_gap=5)) < len(ours)


def test_tracks_are_ordered_by_start():
    a, b = box(0, 0, 50, 50), box(300, 0, 50, 50)
    frames = [a] * 5 + [np.concatenate([a, b])] * 5 + [b] * 20 + [np.concatenate([a, b])] * 3
    tracks = track_faces(frames, max_gap=0)
    assert spans(tracks) == [(0, 9), (5, 32), (30, 32)]


# ---------------------------------------------------------------------------------------- square box


def test_enlarge_formula_hand_computed():
    # w=100, h=50, increase 0.1: width_increase = max(0.1, (1.2*50 - 100)/200 = -0.2) = 0.1 -> 10 px each side
    # height_increase = max(0.1, (1.2*100 - 50)/100 = 0.7) -> 35 px each side: a 120 x 120 square
    np.testing.assert_allclose(enlarge_box([100, 100, 200, 150], 0.1), [90, 65, 210, 185])
    # tall box w=40, h=80, increase 0.25: width_increase = (1.5*80 - 40)/80 = 1.0, height_increase = 0.25
    np.testing.assert_allclose(enlarge_box([0, 0, 40, 80], 0.25), [-40, -20, 80, 100])
    # square box: both 0.1
    np.testing.assert_allclose(enlarge_box([10, 20, 60, 70], 0.1), [5, 15, 65, 75])
    with pytest.raises(ValueError, match="degenerate"):
        enlarge_box([10, 10, 10, 20])


def test_square_box_centred_when_inside():
    b = square_crop_box([400, 400, 500, 450], (1000, 1000), 0.1)
    assert b.tolist() == [390, 365, 510, 485]
    assert b.dtype.kind == "i"


def test_square_box_shifted_inside_the_frame_without_distortion():
    # enlarged [-10, 90, 110, 210] -> shifted right by 10
    assert square_crop_box([0, 100, 100, 200], (500, 500), 0.1).tolist() == [0, 90, 120, 210]
    # bottom-right corner: enlarged [385, 385, 505, 505] in a 480 x 500 (h x w) frame
    assert square_crop_box([395, 395, 495, 495], (480, 500), 0.1).tolist() == [380, 360, 500, 480]


def test_square_box_padded_only_when_larger_than_the_frame():
    # w=100, h=70 -> side 120 > frame height 100: y covers the whole frame, as centred as it can be
    b = square_crop_box([150, 20, 250, 90], (100, 400), 0.1)
    assert b.tolist() == [140, -5, 260, 115]
    # face at the top of a short frame: centred would be y0 = -45, but the box must cover [0, 100]
    b = square_crop_box([150, 0, 250, 30], (100, 400), 0.1)
    assert b.tolist() == [140, -20, 260, 100]
    # side exactly the frame height: fits, so no padding at all
    b = square_crop_box([0, 0, 100, 100], (120, 500), 0.1)
    assert b.tolist() == [0, 0, 120, 120]


def test_square_box_property_random():
    rng = np.random.default_rng(1)
    for _ in range(500):
        h, w = rng.integers(50, 400, 2)
        x0, y0 = rng.uniform(-20, w), rng.uniform(-20, h)
        u = [x0, y0, x0 + rng.uniform(5, 200), y0 + rng.uniform(5, 200)]
        b = square_crop_box(u, (h, w), 0.1)
        side = b[2] - b[0]
        assert b[3] - b[1] == side
        assert abs(side - 1.2 * max(u[2] - u[0], u[3] - u[1])) <= 0.5 + 1e-9
        for lo, hi, extent in ((b[0], b[2], w), (b[1], b[3], h)):
            if side <= extent:
                assert 0 <= lo and hi <= extent
            else:
                assert lo <= 0 and hi >= extent


# ----------------------------------------------------------------------------------------- crop/resize


def test_crop_and_resize_places_a_known_square():
    frame = np.full((200, 300, 3), 40, np.uint8)
    frame[60:100, 100:140] = (255, 0, 0)  # 40 x 40 red square
    frames = np.stack([frame, frame[:, ::-1]])  # second frame mirrored: no square in the box
    out = crop_and_resize(frames, [80, 40, 160, 120], 160)  # 80 px box, x2: square -> [40:120, 40:120]
    assert out.shape == (2, 160, 160, 3) and out.dtype == np.uint8
    assert (out[0, 42:118, 42:118] == (255, 0, 0)).all()
    assert (out[0, :38] == 40).all() and (out[0, 122:] == 40).all()
    assert (out[0, :, :38] == 40).all() and (out[0, :, 122:] == 40).all()
    assert (out[1] == 40).all()
    # downscale by 2: square -> [10:30, 10:30] of a 40 px crop
    small = crop_and_resize(frame, [80, 40, 160, 120], 40)
    assert small.shape == (40, 40, 3)
    assert (small[11:29, 11:29] == (255, 0, 0)).all() and (small[:9] == 40).all()
    # same size: an exact copy
    np.testing.assert_array_equal(crop_and_resize(frames, [80, 40, 160, 120], 80), frames[:, 40:120, 80:160])


def test_crop_and_resize_edge_pads_outside_the_frame():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[:, 0] = (0, 0, 255)  # blue left column
    frame[0, :] = (0, 255, 0)  # green top row (overrides the corner)
    out = crop_and_resize(frame[None], [-20, -20, 60, 60], 80)[0]  # same size: no resampling
    assert (out[25:, :21] == (0, 0, 255)).all()  # left padding replicates the blue column
    assert (out[:21, 25:] == (0, 255, 0)).all()  # top padding replicates the green row
    assert (out[25:, 25:] == 0).all()
    with pytest.raises(ValueError, match="does not overlap"):
        crop_and_resize(frame[None], [200, 200, 260, 260], 32)


def test_crop_and_resize_antialiases():
    # a 1-px checkerboard shrunk 3x: plain bilinear samples single pixels (pure black/white aliasing);
    # antialiased bilinear averages a 7x7 triangle-weighted window: 41/81 of 255 or 40/81 of it, i.e. grey
    checker = ((np.indices((192, 192)).sum(0) % 2) * 255).astype(np.uint8)
    frames = np.repeat(np.stack([checker] * 3, -1)[None], 40, axis=0)  # 40 frames: more than one chunk
    out = crop_and_resize(frames, [0, 0, 192, 192], 64)
    assert out.shape == (40, 64, 64, 3)
    assert np.abs(out.astype(int) - 127.5).max() <= 3


@pytest.mark.parametrize("bx, size", [([100, 50, 164, 114], 256), ([60, 20, 188, 148], 64), ([-30, -40, 170, 160], 100)])
def test_to_crop_coords_matches_the_crop(bx, size):
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    for px, py in [(137, 83), (120.3, 95.6)]:
        blob = 200 * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 3.0**2))
        frame = np.repeat(blob[..., None], 3, -1).round().astype(np.uint8)
        crop = crop_and_resize(frame[None], bx, size)[0, ..., 0].astype(float)
        cy, cx = np.mgrid[0:size, 0:size]
        expected = to_crop_coords(np.array([px, py]), bx, size)
        assert crop.sum() > 0
        centroid = np.array([(cx * crop).sum(), (cy * crop).sum()]) / crop.sum()
        scale = size / (bx[2] - bx[0])
        np.testing.assert_allclose(centroid, expected, atol=0.15 * max(1.0, scale))
        np.testing.assert_allclose(from_crop_coords(expected, bx, size), [px, py], atol=1e-9)
    pts = np.random.default_rng(0).uniform(0, 300, (5, 68, 2))
    assert to_crop_coords(pts, bx, size).shape == (5, 68, 2)


# ------------------------------------------------------------------------------------- videos & stage


def bright_square_detector(frame):
    """A stand-in face detector: boxes of the bright blobs."""
    labels, n = ndimage.label(frame.mean(-1) > 128)
    return np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels)], float).reshape(-1, 4)


def background(i):
    return 20 + 20 * (i % 5)  # the frame index mod 5, readable in the crops (all below the detector's 128)


def square_video(n, squares, h=96, w=128):
    """n frames with white 24 px squares at (x, y) = squares(i) (a list per frame) on a grey that encodes i."""
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = background(i)
        for x, y in squares(i):
            frames[i, y : y + 24, x : x + 24] = 255
    return frames


def test_find_tracks_and_crop_tracks_in_memory():
    frames = square_video(40, lambda i: [(10 + i // 4, 20)] + ([(90, 60)] if i < 20 else []))
    kept = find_tracks(frames, bright_square_detector, min_frames=25)
    assert len(kept) == 1  # the second square lasts 20 frames: dropped
    t, b = kept[0]
    assert (t.start, t.end) == (0, 39)
    assert b[2] - b[0] == b[3] - b[1]
    results = crop_tracks(frames, bright_square_detector, size=32, min_frames=18)
    assert [(r.track_index, r.start, r.end) for r in results] == [(0, 0, 39), (1, 0, 19)]
    assert results[0].frames.shape == (40, 32, 32, 3) and results[0].frames.dtype == np.uint8
    assert results[1].frames[:, 16, 16].min() > 200  # the square sits in the middle of its crop
    # FOMM's rule, end - start > min_frames: the track of frames 0-19 (end - start = 19) needs min_frames <= 18
    assert len(find_tracks(frames, bright_square_detector, min_frames=19)) == 1
    assert len(find_tracks(frames, bright_square_detector, min_frames=18)) == 2


def test_crop_videos_writes_crops_and_survives_bad_inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    write_video(src / "b_two.mp4", square_video(36, lambda i: [(8 + i // 6, 30), (90, 10 + i // 8)]), fps=25)
    write_video(src / "c_noface.mp4", square_video(30, lambda i: []), fps=25)
    write_video(src / "d_short.mp4", square_video(30, lambda i: [(50, 40)] if 5 <= i < 15 else []), fps=30)
    write_video(src / "e_one.mp4", square_video(30, lambda i: [(40, 30 + i // 10)]), fps=30)
    (src / "notes.txt").write_text("not a video")
    inputs = crop_command_inputs(src)
    assert [p.name for p in inputs] == ["a_corrupt.mp4", "b_two.mp4", "c_noface.mp4", "d_short.mp4", "e_one.mp4"]

    out = tmp_path / "out"
    res = crop_videos(inputs, out, size=64, min_frames=25, detector=bright_square_detector, progress=False)
    assert json.loads((out / "crops.json").read_text()) == json.loads(json.dumps(res))
    assert list(res) == [str(p) for p in inputs]  # keyed by input, in order
    by = {k.split("/")[-1]: e for k, e in res.items()}
    assert all(e["video"] == k for k, e in res.items())

    bad = by["a_corrupt.mp4"]
    assert bad["tracks"] == [] and "a_corrupt.mp4" in bad["reason"] and "corrupt" in bad["reason"]
    assert by["c_noface.mp4"]["tracks"] == [] and "no face detected" in by["c_noface.mp4"]["reason"]
    short = by["d_short.mp4"]
    assert short["tracks"] == [] and "longest spans 5-14" in short["reason"] and "min_frames=25" in short["reason"]

    two = by["b_two.mp4"]
    assert two["reason"] is None and two["fps"] == 25 and two["frames"] == 36 and two["size"] == [128, 96]
    assert [t["file"] for t in two["tracks"]] == ["b_two_0.mp4", "b_two_1.mp4"]
    one = by["e_one.mp4"]
    assert one["reason"] is None and [t["file"] for t in one["tracks"]] == ["e_one_0.mp4"] and one["fps"] == 30
    for entry in (two, one):
        for t in entry["tracks"]:
            x0, y0, x1, y1 = t["box"]
            assert x1 - x0 == y1 - y0
            clip, info = read_video(out / t["file"])
            assert clip.shape == (t["end"] - t["start"] + 1, 64, 64, 3)
            assert info.fps == pytest.approx(entry["fps"], rel=0.01)
            assert clip[:, 26:38, 26:38].mean() > 200  # the white square is in the middle of every crop
            # each crop frame comes from its own source frame (no off-by-one): compare the background grey
            corners = np.concatenate([clip[:, :3, :3], clip[:, -3:, -3:]], 1).reshape(len(clip), -1).mean(1)
            np.testing.assert_allclose(corners, [background(i) for i in range(t["start"], t["end"] + 1)], atol=4)
    assert sorted(p.name for p in out.iterdir()) == ["b_two_0.mp4", "b_two_1.mp4", "crops.json", "e_one_0.mp4"]


def test_crop_videos_rejects_odd_size(tmp_path):
    with pytest.raises(ValueError, match="even"):
        crop_videos([], tmp_path, size=63, detector=bright_square_detector, progress=False)


def test_crop_command_inputs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        crop_command_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no video files"):
        crop_command_inputs(tmp_path / "empty")
    f = tmp_path / "clip.MOV"
    f.write_bytes(b"")
    assert crop_command_inputs(f) == [f]
    d = tmp_path / "mixed"
    d.mkdir()
    for name in ["z.webm", "a.MKV", ".hidden.mp4", "m.avi", "k.mov", "b.mp4", "x.gif"]:
        (d / name).write_bytes(b"")
    assert [p.name for p in crop_command_inputs(d)] == ["a.MKV", "b.mp4", "k.mov", "m.avi", "z.webm"]
