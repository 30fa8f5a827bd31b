"""`reenact animate`: one portrait (image or video) animated by one driving video, the command a person uses.

1. The source: the face of an image (the largest) or of a video's first tracked frame, cropped as `prepare` crops
   (pipeline.analysis.inputs.load_faces: the project's one detect -> track -> crop path, pipeline/crop.py).
2. The driving video: detect and track faces (pass 1), keep the longest track, and crop EVERY frame of the video
   with its one square box (pass 2, streamed into a temporary memory-mapped array), so that the result has
   exactly the driving video's frames.
3. Optional Cyclic Manifold Adjustment (a copy of G for this pair, pipeline/cma.py), optional edits (Eq. 4).
4. Eq. 3 streamed chunk by chunk (pipeline/reenact.py), written as H.264 at the driving video's frame rate, with
   the driving video's audio track copied in (no re-encoding), optionally as source | driving | result.
Nothing half-written: the output appears only when complete (pipeline/io.atomic_path). Errors name the input and
the fix (no face, unreadable file, an encoder trained for another generator).
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pipeline.reenact import Models, ReenactError, Reenactor


@dataclass
class AnimateResult:
    out: Path
    frames: int  # frames written (= the driving video's)
    fps: Fraction  # the driving video's average frame rate
    audio: bool  # an audio track was copied from the driving video
    track: tuple[int, int]  # the driving face track's first and last frame
    cma_steps: int | None  # None without --cma


def driving_rate(path: Path) -> tuple[Fraction, bool]:
    """(average frame rate of the first video stream, has an audio stream)."""
    import av

    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate or Fraction(25)
        return Fraction(rate), bool(c.streams.audio)


def crop_driving(path: Path, size: int, detect, workdir: Path, *, crop: bool = True, iou_with_initial: float = 0.25,
                 max_gap: int = 5, increase: float = 0.1, progress: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """Every frame of the driving video cropped with the longest face track's box, into a memory-mapped uint8
    [T, size, size, 3] under `workdir` (memory stays flat in the video's length); also the track's frame range.
    ReenactError naming the video when it cannot be read or shows no face."""
    from pipeline.crop import CropPlan, crop_and_resize, detect_tracks, track_crops
    from pipeline.video import VideoError, iter_frames

    try:
        if crop:
            video = detect_tracks(path, detect, iou_with_initial=iou_with_initial, max_gap=max_gap, progress=progress)
            n = video.n_frames
            if n == 0:
                raise ReenactError(f"{path}: zero frames decoded; give a video (mp4, mov, avi, mkv, webm)")
            kept = video.kept(min_frames=-1, increase=increase)  # no minimum length: any tracked face drives
            if not kept:
                raise ReenactError(f"{path}: no face found in any of its {n} frames (dlib's HOG detector finds frontal "
                                   f"faces of >= ~40 px); give a driving video with a visible, roughly frontal face, or "
                                   f"pass --no-crop if it already is an aligned face crop")
            track, box = max(kept, key=lambda tb: (tb[0].n_frames, len(tb[0].boxes)))
            frames = np.lib.format.open_memmap(workdir / "driving.npy", mode="w+", dtype=np.uint8,
                                               shape=(n, size, size, 3))
            for _, i, crop_, _ in track_crops(video, [CropPlan(track, box, set(range(n)))], size):
                frames[i] = crop_
            span = (track.start, track.end)
        else:
            n = sum(1 for _ in iter_frames(path))
            if n == 0:
                raise ReenactError(f"{path}: zero frames decoded; give a video (mp4, mov, avi, mkv, webm)")
            frames = np.lib.format.open_memmap(workdir / "driving.npy", mode="w+", dtype=np.uint8,
                                               shape=(n, size, size, 3))
            for i, (_, frame) in enumerate(iter_frames(path)):
                h, w = frame.shape[:2]
                side = min(h, w)
                x0, y0 = (w - side) // 2, (h - side) // 2
                frames[i] = crop_and_resize(frame, (x0, y0, x0 + side, y0 + side), size)
            span = (0, n - 1)
    except VideoError as e:
        raise ReenactError(f"cannot read the driving video {path}: {e}. Give a video (mp4, mov, avi, mkv, webm); "
                           f"re-encode a damaged one, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4") from e
    frames.flush()
    del frames
    return np.load(workdir / "driving.npy", mmap_mode="r"), span


def load_source(path: Path, size: int, detect, *, crop: bool = True, increase: float = 0.1) -> np.ndarray:
    """The one-shot source crop uint8 [size, size, 3]: an image's largest face, or a video's first tracked frame."""
    from pipeline.analysis.inputs import load_faces

    try:
        faces = load_faces(path, size, detect, crop=crop, increase=increase)
    except ValueError as e:  # AnalyzeInputError (a UserError): it names the file and the fix
        raise ReenactError(f"source: {e}") from None
    return np.array(faces.frames[0])


def animate(
    models: Models,
    source: str | os.PathLike,  # an image or a video (its first tracked face)
    driving: str | os.PathLike,  # the driving video
    out: str | os.PathLike,  # the output .mp4
    *,
    detect=None,  # frame -> boxes [K, 4] (default: dlib's HOG, pipeline.faces.DlibDetector(upsample))
    crop: bool = True,  # False: both inputs already are aligned face crops (only resized)
    upsample: int = 1,  # dlib HOG upsampling when `detect` is None
    increase: float = 0.1,  # FOMM's enlargement of the face box (params prepare.increase)
    iou_with_initial: float = 0.25,  # tracking (params prepare.iou_with_initial)
    max_gap: int = 5,  # tracking (params prepare.max_gap)
    cma: dict | None = None,  # keyword arguments of cyclic_manifold_adjustment (steps, lr, ...); None: no CMA
    perceptual=None,  # CMA's LPIPS network
    edits: Sequence[str] = (),  # --edit texts (pipeline/edits.py syntax)
    directions: Sequence | None = None,  # the edit directions to choose from
    side_by_side: bool = False,  # source | driving | result
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> AnimateResult:
    """Animate `source` with `driving` into `out` (see the module docstring)."""
    from pipeline.edits import EditSchedule
    from pipeline.io import atomic_path
    from pipeline.video import write_video

    source, driving, out = Path(source), Path(driving), Path(out)
    if out.suffix.lower() != ".mp4":
        raise ReenactError(f"--out {out}: the output is an H.264 .mp4; name it OUT.mp4")
    for what, p in (("source", source), ("driving video", driving)):
        if not p.is_file():
            raise ReenactError(f"{p}: no such file (the {what}); give its path")
    if edits:
        EditSchedule.parse(list(edits), list(directions or []), 1)  # a bad --edit fails before any decoding
    if detect is None and crop:
        from pipeline.faces import DlibDetector

        detect = DlibDetector(upsample=upsample)
    size = models.size
    source_crop = load_source(source, size, detect, crop=crop, increase=increase)
    try:
        fps, has_audio = driving_rate(driving)
    except Exception as e:  # PyAV fails on unreadable files in many ways
        raise ReenactError(f"cannot read the driving video {driving} ({e}); give a video (mp4, mov, avi, mkv, webm), "
                           f"re-encode a damaged one, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4") from None
    with tempfile.TemporaryDirectory(prefix=".animate-", dir=out.parent if out.parent.is_dir() else None) as tmp:
        tmp = Path(tmp)
        frames, span = crop_driving(driving, size, detect, tmp, crop=crop, iou_with_initial=iou_with_initial,
                                    max_gap=max_gap, increase=increase, progress=progress)
        schedule = EditSchedule.parse(list(edits), list(directions or []), len(frames)) if edits else None
        engine = Reenactor(models)
        src = engine.source(source_crop)
        steps = None
        if cma is not None:
            from pipeline.cma import cyclic_manifold_adjustment

            adapted = cyclic_manifold_adjustment(models, src, frames, perceptual=perceptual, seed=seed, **cma)
            engine, steps = Reenactor(models, adapted.G), adapted.steps
        result = _with_progress(engine.stream(src, frames, batch_size, schedule), len(frames), progress)
        if side_by_side:
            result = _side_by_side(source_crop, frames, result)
        video = tmp / "video.mp4"
        n = write_video(video, (f for chunk in result for f in chunk), fps)
        with atomic_path(out) as target:
            _mux(video, driving if has_audio else None, target)
    return AnimateResult(out, n, fps, has_audio, span, steps)


def _with_progress(chunks: Iterator[np.ndarray], total: int, progress: bool) -> Iterator[np.ndarray]:
    if not progress:
        yield from chunks
        return
    from tqdm import tqdm

    with tqdm(total=total, desc="animate", unit="frame", file=sys.stderr) as bar:
        for chunk in chunks:
            bar.update(len(chunk))
            yield chunk


def _side_by_side(source: np.ndarray, driving: np.ndarray, result: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    start = 0
    for chunk in result:
        d = np.asarray(driving[start:start + len(chunk)])
        s = np.broadcast_to(source, chunk.shape)
        yield np.concatenate([s, d, chunk], axis=2)
        start += len(chunk)


def _mux(video: Path, audio_from: Path | None, out: Path) -> None:
    """Copy the H.264 stream of `video` and the first audio stream of `audio_from` (no re-encoding) into `out`."""
    import av
    import shutil

    if audio_from is None:
        shutil.copyfile(video, out)
        return
    with av.open(str(video)) as v, av.open(str(audio_from)) as a, av.open(str(out), "w", format="mp4") as o:
        vin, ain = v.streams.video[0], a.streams.audio[0]
        vout = o.add_stream_from_template(vin)
        aout = o.add_stream_from_template(ain)
        for packet in v.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            o.mux(packet)
        for packet in a.demux(ain):
            if packet.dts is None:
                continue
            packet.stream = aout
            o.mux(packet)

