"""Reading the `prepare` store: frames, landmarks and masks of the prepared clips, by split."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.prepare import clips_dir


@dataclass
class SplitArrays:
    """All stored frames of one split, concatenated (fits in memory at toy sizes; real data streams per clip)."""

    frames: np.ndarray  # uint8 [N, S, S, 3]
    masks: np.ndarray  # uint8 [N, S, S]: the Eq. 13 feature mask
    landmarks: np.ndarray  # float32 [N, 68, 2] in crop pixels
    clip_ids: np.ndarray  # str [N]
    identities: np.ndarray  # str [N]
    truth: dict[str, np.ndarray] | None = None  # synthetic world only: renderer's expression/pose/gaze [N, C]

    def __len__(self) -> int:
        return len(self.frames)


def read_manifest(prepared: Path) -> pd.DataFrame:
    path = Path(prepared) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prepared data; run the `prepare` stage first (dvc repro prepare)")
    return pd.read_csv(path, keep_default_na=False)


TRUTH_KEYS = ("expression", "pose", "gaze")


def load_split(prepared: Path, split: str, kind: str = "clip", max_frames: int | None = None,
               with_truth: bool = False) -> SplitArrays:
    """Concatenate the stored frames of every clip of `split` (train | test) and `kind` (clip | cross).

    with_truth: also the renderer's per-frame labels (truth.npz; an error for clips without them)."""
    manifest = read_manifest(prepared)
    rows = manifest[(manifest["split"] == split) & (manifest["kind"] == kind)]
    if rows.empty:
        raise ValueError(f"{prepared}: no prepared clips with split={split!r} and kind={kind!r}")
    frames, masks, lms, ids, who = [], [], [], [], []
    truth: dict[str, list[np.ndarray]] = {k: [] for k in TRUTH_KEYS}
    for rec in rows.to_dict("records"):
        folder = clips_dir(Path(prepared)) / rec["clip_id"]
        f = np.load(folder / "frames.npy", mmap_mode="r")
        frames.append(np.asarray(f))
        if with_truth:
            if not (folder / "truth.npz").is_file():
                raise ValueError(f"{folder}: no renderer ground truth (truth.npz); labels exist for the synthetic world only")
            with np.load(folder / "truth.npz") as t:
                for k in TRUTH_KEYS:
                    truth[k].append(t[k])
        masks.append(np.load(folder / "masks.npy"))
        lms.append(np.load(folder / "landmarks.npy"))
        ids += [rec["clip_id"]] * len(f)
        who += [rec["identity"]] * len(f)
        if max_frames is not None and sum(len(x) for x in frames) >= max_frames:
            break
    labels = {k: np.concatenate(v) for k, v in truth.items()} if with_truth else None
    out = SplitArrays(np.concatenate(frames), np.concatenate(masks), np.concatenate(lms), np.asarray(ids), np.asarray(who), labels)
    if max_frames is not None:
        out = SplitArrays(*(a[:max_frames] for a in (out.frames, out.masks, out.landmarks, out.clip_ids, out.identities)),
                          None if labels is None else {k: v[:max_frames] for k, v in labels.items()})
    return out
