"""Videos to evaluate: pairing predictions with driving (and source, target) videos by name, and streaming
their frames in lockstep, chunk by chunk, never a whole video in memory.

A frame source is a video file (mp4, mov, avi, mkv, webm; decoded by pipeline/video.py), a `.npy` array
[T, H, W, 3] uint8 (memory-mapped: the prepared store's format), or an in-memory array. Still sources
(the one-shot source frame) are images (png, jpg, ...), or the first frame of any frame source.

Frames are compared at the PREDICTIONS' resolution: driving, source and target frames are resized to it
(PIL bilinear, antialiased when shrinking); the output says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import Image

from pipeline.evaluation.robustness import SEPARATOR, driving_of

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
ARRAY_EXTS = (".npy",)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
RESIZE_NOTE = ("frames compared at the predictions' resolution; driving, source and target frames resized to it "
               "(PIL bilinear, antialiased when shrinking)")

FrameSource = Union[Path, str, np.ndarray]


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (missing pair, unreadable video, mismatched frame counts): the message
    names the file(s). A user error: `reenact evaluate` prints it and exits with status 2, or, with
    --skip-bad, records it as the video's skip reason."""


@dataclass
class Pair:
    """One prediction and what it is compared with."""

    name: str  # the prediction's name (file stem): the key of per_video
    pred: FrameSource
    driving: FrameSource
    source: FrameSource | None = None  # the one-shot source frame; None: the first driving frame (same identity)
    target: FrameSource | None = None  # ground-truth cross render (synthetic world), for the *_gt metrics
    landmarks: np.ndarray | None = None  # [T, 68, 2] of the DRIVING frames in driving pixels (None: dlib finds them)
    group: str = ""  # the driving video (robustness: the cluster of its source frames); default: name
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.group = self.group or self.name


def describe(src: FrameSource | None) -> str:
    if src is None:
        return "(none)"
    if isinstance(src, np.ndarray):
        return f"<array {list(src.shape)}>"
    return str(src)


def iter_frames(src: FrameSource, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 [H, W, 3] frames of a frame source (EvaluationError naming the file when it is unusable)."""
    from pipeline.video import VideoError, iter_frames as video_frames

    if isinstance(src, np.ndarray):
        frames = _check_array(src, "<array>")
    else:
        path = Path(src)
        if not path.is_file():
            raise EvaluationError(f"{path}: no such file")
        if path.suffix.lower() in ARRAY_EXTS:
            try:
                frames = _check_array(np.load(path, mmap_mode="r"), str(path))
            except (OSError, ValueError) as e:
                raise EvaluationError(f"{path}: not a readable frame array ({e})") from None
        else:
            try:
                for i, (_, frame) in enumerate(video_frames(path)):
                    if max_frames is not None and i >= max_frames:
                        return
                    yield frame
            except VideoError as e:
                raise EvaluationError(str(e)) from None
            return
    for i in range(len(frames) if max_frames is None else min(len(frames), max_frames)):
        yield np.asarray(frames[i])


def count_frames(src: FrameSource, max_frames: int | None = None) -> int | None:
    """Frame count from metadata (array length, container's frame count), or None when unknown (no decoding)."""
    n = None
    if isinstance(src, np.ndarray):
        n = len(src)
    else:
        path = Path(src)
        try:
            if path.suffix.lower() in ARRAY_EXTS:
                n = len(np.load(path, mmap_mode="r"))
            else:
                import av

                with av.open(str(path)) as c:
                    n = int(c.streams.video[0].frames) or None
        except Exception:  # unreadable: the streaming pass reports it with the file's name
            n = None
    return n if n is None or max_frames is None else min(n, max_frames)


def read_still(src: FrameSource) -> np.ndarray:
    """An image file, or the first frame of a frame source, as RGB uint8 [H, W, 3]."""
    if isinstance(src, np.ndarray) and src.ndim == 3:
        return np.array(_check_array(src[None], "<array>")[0])
    if not isinstance(src, np.ndarray) and Path(src).suffix.lower() in IMAGE_EXTS:
        path = Path(src)
        if not path.is_file():
            raise EvaluationError(f"{path}: no such file")
        try:
            with Image.open(path) as im:
                return np.array(im.convert("RGB"))
        except OSError as e:
            raise EvaluationError(f"{path}: unreadable image ({e})") from None
    for frame in iter_frames(src, 1):
        return np.array(frame)  # a writable copy (a memory-mapped array's rows are read-only)
    raise EvaluationError(f"{describe(src)}: no frames")


def resize(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if frame.shape[:2] == tuple(hw):
        return frame
    return np.array(Image.fromarray(np.ascontiguousarray(frame)).resize((hw[1], hw[0]), Image.BILINEAR))


def iter_chunks(pair: Pair, batch: int, max_frames: int | None = None) -> Iterator[dict]:
    """Lockstep chunks of a pair: {"start", "pred" [B, H, W, 3], "driving", "target" (or None),
    "landmarks" [B, 68, 2] scaled to the prediction's pixels (or None)}; driving / target resized to the
    prediction's size. EvaluationError naming both files when the frame counts differ."""
    streams = {"pred": iter_frames(pair.pred, max_frames), "driving": iter_frames(pair.driving, max_frames)}
    if pair.target is not None:
        streams["target"] = iter_frames(pair.target, max_frames)
    lm = None if pair.landmarks is None else np.asarray(pair.landmarks, dtype=np.float64)
    hw, scale, start = None, None, 0
    while True:
        buf: dict[str, list] = {k: [] for k in streams}
        ended: set[str] = set()
        for _ in range(batch):
            for k, it in streams.items():
                if k in ended:
                    continue
                frame = next(it, None)
                if frame is None:
                    ended.add(k)
                    continue
                if k == "pred" and hw is None:
                    hw = frame.shape[:2]
                buf[k].append(frame)
            if ended:
                break
        lengths = {k: start + len(v) for k, v in buf.items()}
        if ended and len(set(lengths.values())) > 1:
            total = {k: (lengths[k] if k in ended else _remaining(streams[k], lengths[k])) for k in streams}
            files = ", ".join(f"{k} {describe(getattr(pair, k))}: {total[k]} frame(s)" for k in streams)
            raise EvaluationError(f"{pair.name}: frame counts differ ({files}"
                                  f"{f'; limit {max_frames}' if max_frames else ''})")
        n = len(buf["pred"])
        if n == 0:
            if start == 0:
                raise EvaluationError(f"{describe(pair.pred)}: no frames")
            return
        if hw is None:
            hw = buf["pred"][0].shape[:2]
        chunk = {"start": start, "pred": np.stack(buf["pred"])}
        for k in ("driving", "target"):
            chunk[k] = np.stack([resize(f, hw) for f in buf[k]]) if k in buf else None
        if lm is not None:
            if scale is None:
                dh, dw = buf["driving"][0].shape[:2]
                scale = np.array([hw[1] / dw, hw[0] / dh])
            part = lm[start : start + n]
            if len(part) < n:
                raise EvaluationError(f"{pair.name}: {len(lm)} landmark rows for a video of more frames")
            chunk["landmarks"] = part * scale
        else:
            chunk["landmarks"] = None
        for k, v in buf.items():
            if k == "pred":
                continue
            if any(f.ndim != 3 or f.shape[2] != 3 for f in v):
                raise EvaluationError(f"{describe(getattr(pair, k))}: frames must be RGB")
        yield chunk
        start += n
        if ended:
            return


def _remaining(it: Iterator, counted: int) -> int:
    return counted + sum(1 for _ in it)


def _check_array(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise EvaluationError(f"{what}: expected uint8 frames [T, H, W, 3], got {a.dtype} {list(a.shape)}")
    return a


# -- pairing by name ---------------------------------------------------------------------------------------

def _index(folder: Path, exts: tuple[str, ...], what: str) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: {what} folder not found")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            if p.stem in out:
                exact = [q for q in (out[p.stem], p) if q.suffix.lower() in ARRAY_EXTS]
                if len(exact) == 1:  # frames.npy beside the mp4 made from them (the reenact stage): the exact frames
                    out[p.stem] = exact[0]
                    continue
                raise EvaluationError(f"{folder}: two {what} files named {p.stem!r} ({out[p.stem].name}, {p.name}); keep one")
            out[p.stem] = p
    return out


def find_pairs(
    pred_dir: str | os.PathLike,
    driving_dir: str | os.PathLike,
    source_dir: str | os.PathLike | None = None,
    target_dir: str | os.PathLike | None = None,
    landmarks_dir: str | os.PathLike | None = None,
    protocol: str = "same",
) -> tuple[list[Pair], dict[str, str]]:
    """Pairs by file name (stem) and the problems found, {file: reason} (missing counterparts).

    same / cross: pred <name> pairs with driving <name>, source <name>, target <name>.
    robustness: pred <driving>__<tag> pairs with driving <driving> and source <driving>__<tag>.
    Sources are images or videos (their first frame); without --source, same-identity predictions use the
    first driving frame (FOMM's convention) and cross / robustness fail. Landmarks: <driving>.npy [T, 68, 2]."""
    media = VIDEO_EXTS + ARRAY_EXTS
    preds = _index(Path(pred_dir), media, "prediction")
    drivings = _index(Path(driving_dir), media, "driving")
    sources = _index(Path(source_dir), media + IMAGE_EXTS, "source") if source_dir is not None else None
    targets = _index(Path(target_dir), media, "target") if target_dir is not None else None
    marks = _index(Path(landmarks_dir), (".npy",), "landmarks") if landmarks_dir is not None else None
    if not preds:
        raise EvaluationError(f"{pred_dir}: no prediction videos ({', '.join(media)})")
    if sources is None and protocol != "same":
        raise EvaluationError(f"the {protocol} protocol needs --source (the source frames, as images or videos named like "
                              f"the predictions)")
    pairs, problems = [], {}
    for name, pred in preds.items():
        try:
            dname = driving_of(name) if protocol == "robustness" else name
        except ValueError as e:
            problems[str(pred)] = str(e)
            continue
        if dname not in drivings:
            problems[str(pred)] = f"no driving video named {dname!r} in {driving_dir}"
            continue
        source = None
        if sources is not None:
            if name not in sources:
                problems[str(pred)] = f"no source frame named {name!r} in {source_dir}"
                continue
            source = sources[name]
        target = None
        if targets is not None:
            if name not in targets:
                problems[str(pred)] = f"no target video named {name!r} in {target_dir}"
                continue
            target = targets[name]
        lm = None
        if marks is not None and dname in marks:
            lm = np.load(marks[dname])
        pairs.append(Pair(name, pred, drivings[dname], source, target, lm, group=dname))
    used = {p.group for p in pairs} | {driving_of(n) if protocol == "robustness" and SEPARATOR in n else n for n in preds}
    for dname, path in drivings.items():
        if dname not in used:
            problems[str(path)] = f"no prediction for driving video {dname!r} in {pred_dir}"
    return pairs, problems
