"""Face crops from a user's image or video for `reenact analyze`, cut as the `prepare` stage cuts them.

Video: dlib HOG detection on every frame, IoU tracking (pipeline.crop), and the LONGEST track is kept (ties:
more detections, then the larger union box); one square box for the whole track (the union of its detections
enlarged by `increase`, `square_crop_box`: FOMM's rule), every frame of the track's range cropped with it and
resized to `size`. Frames outside that track (other people, frames before the face appears) are not returned;
`indices` says which source frames the crops are. Unlike `prepare` there is no minimum track length: a short
clip is still analysed.
Image: the largest detected face, the same square-box rule.
crop=False: the input already is an aligned face crop; it is only resized (a non-square input is cut to its
centred square first, never stretched).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import UserError
from pipeline.config import VIDEO_EXTENSIONS, PrepareParams
from pipeline.crop import CHUNK, CropPlan, crop_and_resize, detect_tracks, square_crop_box, track_crops
from pipeline.faces import largest_box
from pipeline.video import VideoError, frame_rate, iter_frames

_DEFAULTS = PrepareParams()  # crop settings as `prepare` uses them

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff")
_KINDS = f"an image ({', '.join(IMAGE_EXTENSIONS)}) or a video ({', '.join(VIDEO_EXTENSIONS)})"


class AnalyzeInputError(UserError, ValueError):
    """An input to `reenact analyze` cannot be used; the message names the file and the fix."""


@dataclass
class FaceInput:
    path: Path  # the input as given
    kind: str  # "image" | "video"
    frames: np.ndarray  # uint8 [T, size, size, 3] face crops
    indices: np.ndarray  # int64 [T]: source frame index of each crop (0 for an image)
    box: list[int] | None  # square crop box x0, y0, x1, y1 in source pixels (the centred square with crop=False)
    fps: float | None  # average frame rate of a video; None for an image
    source_size: tuple[int, int]  # (width, height) of the source frames

    def __len__(self) -> int:
        return len(self.frames)


def _centre_square(h: int, w: int) -> list[int]:
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return [x0, y0, x0 + side, y0 + side]


@lru_cache(maxsize=1)
def _default_detector():
    from pipeline.faces import DlibDetector

    return DlibDetector()  # upsample 1: finds faces down to ~40 px (wide shots), as `prepare` does


def _default_detect(frame: np.ndarray) -> np.ndarray:
    # built on first use (~0.4 s): a missing or corrupt input fails at once
    return _default_detector()(frame)


def _no_face(path: Path, what: str) -> AnalyzeInputError:
    return AnalyzeInputError(
        f"{path}: no face found {what} (dlib's HOG detector finds frontal faces of >= ~40 px); give a clip or photo "
        f"with a visible, roughly frontal face, or pass --no-crop if the input already is an aligned face crop"
    )


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phone photos: as the viewer shows them, the detector wants upright faces
            return np.array(im.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise AnalyzeInputError(
            f"{path}: unreadable or corrupt image ({e}); give {_KINDS}, e.g. re-save it as PNG or JPEG"
        ) from e


def _looks_like(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return "unknown"


def load_faces(
    path: str | os.PathLike,
    size: int,  # side of the returned square crops (the backend's input_size)
    detector: Callable[[np.ndarray], np.ndarray] | None = None,  # frame -> boxes [K, 4]; default DlibDetector()
    *,
    crop: bool = True,  # False: the input already is an aligned face crop, only resize
    increase: float = _DEFAULTS.increase,  # FOMM's enlargement of the face box per side (as `prepare`)
    iou_with_initial: float = _DEFAULTS.iou_with_initial,  # tracking (as `prepare`)
    max_gap: int = _DEFAULTS.max_gap,
) -> FaceInput:
    """The face crops of an image or a video; AnalyzeInputError (naming the input and the fix) when the file is
    missing, unreadable, or shows no face."""
    path = Path(path)
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not path.exists():
        raise AnalyzeInputError(f"{path}: no such file; give the path of {_KINDS}")
    if not path.is_file():
        raise AnalyzeInputError(f"{path}: not a file; give the path of {_KINDS}")
    if detector is None:
        detector = _default_detect
    kind = _looks_like(path)
    if kind == "unknown":  # no telling extension: an image if PIL can read it, else try it as a video
        try:
            image = _read_image(path)
        except AnalyzeInputError:
            return _video(path, size, detector, crop, increase, iou_with_initial, max_gap)
        return _image(path, image, size, detector, crop, increase)
    if kind == "image":
        return _image(path, _read_image(path), size, detector, crop, increase)
    return _video(path, size, detector, crop, increase, iou_with_initial, max_gap)


def _image(path: Path, image: np.ndarray, size: int, detector, crop: bool, increase: float) -> FaceInput:
    h, w = image.shape[:2]
    if crop:
        boxes = np.asarray(detector(image), dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            raise _no_face(path, "in the image")
        box = [int(v) for v in square_crop_box(largest_box(boxes), (h, w), increase)]
    else:
        box = _centre_square(h, w)
    return FaceInput(path, "image", crop_and_resize(image[None], box, size), np.zeros(1, dtype=np.int64), box,
                     None, (w, h))


def _unreadable(path: Path, e: Exception) -> AnalyzeInputError:
    return AnalyzeInputError(
        f"cannot read {path} as a video: {e}. Give {_KINDS}; re-encode a damaged video, e.g. "
        f"ffmpeg -i IN -c:v libx264 OUT.mp4"
    )


def _video(path: Path, size: int, detector, crop: bool, increase: float, iou_with_initial: float,
           max_gap: int) -> FaceInput:
    try:
        if not crop:
            return _video_uncropped(path, size)
        # the project's one detect -> track -> crop path (pipeline.crop), streamed; no minimum track length
        video = detect_tracks(path, detector, iou_with_initial=iou_with_initial, max_gap=max_gap)
        if video.n_frames == 0:
            raise AnalyzeInputError(f"{path}: zero frames decoded; give {_KINDS}")
        kept = video.kept(min_frames=-1, increase=increase)
        if not kept:
            raise _no_face(path, f"in any of its {video.n_frames} frames")
        track, box = max(kept, key=lambda tb: (tb[0].n_frames, len(tb[0].boxes),
                                               float(np.prod(tb[0].union_box[2:] - tb[0].union_box[:2]))))
        crops = [crop for _, _, crop, _ in track_crops(video, [CropPlan(track, box)], size)]
    except VideoError as e:
        raise _unreadable(path, e) from e
    h, w = video.frame_hw
    return FaceInput(path, "video", np.stack(crops), np.arange(track.start, track.end + 1, dtype=np.int64),
                     [int(v) for v in box], video.fps, (w, h))


def _video_uncropped(path: Path, size: int) -> FaceInput:
    out, buf, times, hw = [], [], [], None
    for t, frame in iter_frames(path):
        times.append(t)
        hw = hw or frame.shape[:2]
        buf.append(frame)
        if len(buf) == CHUNK:
            out.append(crop_and_resize(np.stack(buf), _centre_square(*hw), size))
            buf = []
    if buf:
        out.append(crop_and_resize(np.stack(buf), _centre_square(*hw), size))
    if not out:
        raise AnalyzeInputError(f"{path}: zero frames decoded; give {_KINDS}")
    crops = np.concatenate(out)
    h, w = hw
    return FaceInput(path, "video", crops, np.arange(len(crops), dtype=np.int64), _centre_square(h, w),
                     frame_rate(times)[0], (w, h))
