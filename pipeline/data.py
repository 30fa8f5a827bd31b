"""Stage `data`: the raw videos and their index.

Synthetic (the embedded default): render the talking-head world. Folder: index the user's videos
(nothing is copied; the index records size and mtime so that DVC notices when a video changes).
Either way the output is the raw index (pipeline.store) with one row per video, which `prepare` reads.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.errors import UserError
from pipeline.config import DataParams
from pipeline.io import atomic_dir
from pipeline.store import read_raw_index, write_raw_index
from pipeline.split import held_out

INDEX_COLUMNS = ["path", "identity", "clip", "kind", "motion_from", "truth", "start", "end"]


class DataError(UserError, ValueError):
    """The user's video folder or manifest cannot be indexed; the message says what to fix."""


def make_synthetic(out_dir: Path, params: DataParams, seed: int, test_fraction: float, progress: bool = True) -> dict:
    from pipeline.synth import generate_world
    from pipeline.synth.world import identity_name

    # Cross renders are evaluation ground truth: render them among the identities `prepare` holds out.
    held = held_out([identity_name(i) for i in range(params.n_identities)], test_fraction, seed)

    summary = generate_world(
        out_dir,
        seed=seed,
        n_identities=params.n_identities,
        clips_per_identity=params.clips_per_identity,
        frames_per_clip=params.frames_per_clip,
        resolution=params.resolution,
        fps=params.fps,
        cross_per_clip=min(params.cross_per_clip, len(held) - 1),
        cross_among=held,
        progress=progress,
    )
    return {"source": "synthetic", **summary}


def index_folder(out_dir: Path, params: DataParams, workspace: Path) -> dict:
    """Write the raw index (pipeline.store) for the user's videos and return counts. Paths inside the workspace
    are written relative to `out_dir` (two checkouts in different folders write the same index), others absolute;
    relative data.folder paths are relative to the workspace."""
    folder = params.folder
    if folder.manifest is not None:
        rows = _rows_from_manifest((workspace / Path(folder.manifest).expanduser()).resolve())
    else:
        rows = _rows_from_tree((workspace / Path(folder.root).expanduser()).resolve(), folder.extensions)
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    duplicated = index["clip"].duplicated(keep=False)
    if duplicated.any():  # the same clip name under two identities: make clip ids unique
        index.loc[duplicated, "clip"] = index.loc[duplicated, "identity"] + "__" + index.loc[duplicated, "clip"]
    # Size and mtime make the index change when a video does, so DVC re-runs `prepare`.
    stats = [Path(p).stat() if Path(p).is_file() else None for p in index["path"]]
    index["bytes"] = [s.st_size if s else -1 for s in stats]
    index["mtime_ns"] = [s.st_mtime_ns if s else -1 for s in stats]
    inside = [Path(p).resolve().is_relative_to(Path(workspace).resolve()) for p in index["path"]]
    index["path"] = [Path(os.path.relpath(p, Path(out_dir).resolve())).as_posix() if i else p
                     for p, i in zip(index["path"], inside)]
    with atomic_dir(out_dir) as tmp:
        write_raw_index(tmp, index)
    return {
        "source": "folder",
        "videos": int(len(index)),
        "identities": int(index["identity"].nunique()),
        "missing_files": int((index["bytes"] < 0).sum()),
    }


def _rows_from_tree(root: Path, extensions: list[str]) -> list[dict]:
    if not root.is_dir():
        raise DataError(f"data.folder.root: {root} is not a folder; expected <root>/<identity>/<clip>.<ext>")
    suffixes = {f".{e.lower().lstrip('.')}" for e in extensions}
    rows = []
    for identity_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for video in sorted(p for p in identity_dir.iterdir() if p.suffix.lower() in suffixes):
            rows.append(_row(video, identity_dir.name, video.stem))
    if not rows:
        raise DataError(
            f"data.folder.root: no videos ({', '.join(sorted(suffixes))}) found as {root}/<identity>/<clip>.<ext>; "
            "put each identity's videos in its own sub-folder, or use data.folder.manifest"
        )
    return rows


def _rows_from_manifest(manifest: Path) -> list[dict]:
    if not manifest.is_file():
        raise DataError(f"data.folder.manifest: {manifest} not found")
    try:
        table = pd.read_csv(manifest)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"data.folder.manifest: {manifest} is not a readable CSV ({e})") from e
    missing = {"path", "identity"} - set(table.columns)
    if missing:
        raise DataError(
            f"data.folder.manifest: {manifest} lacks column(s) {sorted(missing)}; "
            "expected path,identity[,start,end] (start/end in seconds)"
        )
    rows = []
    for i, rec in table.iterrows():
        path = Path(str(rec["path"])).expanduser()
        path = path if path.is_absolute() else (manifest.parent / path).resolve()
        start = _seconds(rec.get("start"), manifest, i, "start")
        end = _seconds(rec.get("end"), manifest, i, "end")
        if start is not None and end is not None and end <= start:
            raise DataError(f"data.folder.manifest: {manifest} row {i + 2}: end ({end}) must be after start ({start})")
        clip = path.stem if start is None and end is None else f"{path.stem}_{start or 0:g}-{end if end is not None else 'end'}"
        rows.append(_row(path, str(rec["identity"]), clip, start, end))
    if not rows:
        raise DataError(f"data.folder.manifest: {manifest} lists no videos")
    return rows


def _seconds(value, manifest: Path, i: int, column: str) -> float | None:
    if value is None or pd.isna(value) or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"data.folder.manifest: {manifest} row {i + 2}: {column}={value!r} is not a number of seconds") from None


def _row(path: Path, identity: str, clip: str, start: float | None = None, end: float | None = None) -> dict:
    return {"path": str(path), "identity": identity, "clip": clip, "kind": "clip", "motion_from": "", "truth": "",
            "start": start, "end": end}


def sample_sheet(raw_dir: Path, report: Path, n: int = 8) -> Path | None:
    """A PNG of the raw data: first frames of `n` videos and, for the synthetic world, cross renders beside
    the clips whose motion they copy (same frame numbers: same expression and pose, other identity)."""
    from pipeline.plots import image_grid
    from pipeline.video import VideoError, iter_frames

    index = read_raw_index(raw_dir)

    def frame_at(path: str, k: int):
        p = Path(path) if Path(path).is_absolute() else raw_dir / path
        try:
            for i, (_, frame) in enumerate(iter_frames(p)):
                if i == k:
                    return frame
        except VideoError:
            return None
        return None

    images, titles = [], []
    for rec in index[index["kind"] == "clip"].head(n).to_dict("records"):
        frame = frame_at(rec["path"], 0)
        if frame is not None:
            images.append(frame)
            titles.append(str(rec["clip"]))
    by_clip = dict(zip(index["clip"], index["path"]))
    for rec in index[index["kind"] == "cross"].head(n // 2).to_dict("records"):
        for k in (5, 15):  # two moments of the shared motion
            source, cross = frame_at(by_clip[rec["motion_from"]], k), frame_at(rec["path"], k)
            if source is not None and cross is not None:
                images += [source, cross]
                titles += [f"{rec['motion_from']} f{k}", f"{rec['clip']} f{k}"]
    if not images:
        return None
    return image_grid(report, images, titles, ncols=8, suptitle="data: first frames; cross renders beside their motion source")
