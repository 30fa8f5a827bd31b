"""The on-disk stores between stages, and the only code that knows their file names.

Raw index (stage `data`, folder data/raw):
    index.csv                       one row per video: path (relative to the folder, or absolute for videos
                                    outside the workspace), identity, clip, kind, motion_from, truth[, start, end]

Prepared store (stage `prepare`, folder data/prepared):
    manifest.csv                    one row per prepared clip (a kept face track of a video)
    videos.csv                      one row per input video: kept or rejected, and why
    clips/<clip_id>/frames.npy      uint8 [N, size, size, 3], memory-mappable (random reads without decoding)
    clips/<clip_id>/landmarks.npy   float32 [N, 68, 2] in crop pixels
    clips/<clip_id>/masks.npy       uint8 [N, size, size] in {0, 1}: the Eq. 13 feature mask
    clips/<clip_id>/frame_index.npy int32 [N]: frame numbers in the source video
    clips/<clip_id>/truth.npz       (synthetic world only) expression, pose, gaze of the stored frames, identity_vector

Readers: `PreparedStore` (tables and per-clip arrays, memory-mapped), `load_split` (a whole split in memory, for
the toy world's small trainers, refused above a size budget), and the streaming datasets `FrameDataset` and
`TripletDataset` (Sec. 3.2's training triples), which read one frame at a time from the clip files and so keep
memory flat however large the store is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.io import save_npy, save_npz, write_text

if TYPE_CHECKING:
    import torch

RAW_INDEX = "index.csv"
MANIFEST = "manifest.csv"
VIDEOS = "videos.csv"
CLIPS = "clips"
FRAMES = "frames.npy"
LANDMARKS = "landmarks.npy"
MASKS = "masks.npy"
FRAME_INDEX = "frame_index.npy"
TRUTH = "truth.npz"
TRUTH_KEYS = ("expression", "pose", "gaze")  # the renderer's per-frame labels (identity_vector is per clip)

# load_split refuses splits larger than this in memory: real datasets stream through the Dataset classes.
IN_MEMORY_BUDGET = int(os.environ.get("REENACT_IN_MEMORY_BUDGET", 4 << 30))


class StoreError(UserError, FileNotFoundError):
    """A store is missing or incomplete; the message names the file and the stage that writes it."""


# ------------------------------------------------------------------------------------------- raw index


def read_raw_index(raw_dir: str | os.PathLike) -> pd.DataFrame:
    path = Path(raw_dir) / RAW_INDEX
    if not path.is_file():
        raise StoreError(f"{path}: no video index; run the `data` stage first (dvc repro data)")
    return pd.read_csv(path, keep_default_na=False)


def raw_index_path(raw_dir: str | os.PathLike) -> Path:
    return Path(raw_dir) / RAW_INDEX


def write_raw_index(raw_dir: str | os.PathLike, table: pd.DataFrame) -> None:
    write_text(Path(raw_dir) / RAW_INDEX, table.to_csv(index=False, lineterminator="\n"))


def portable_path(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """`path` relative to `base` when it lies inside it (POSIX separators), else absolute: what goes into an
    index, so that two checkouts of one commit in different folders write the same bytes."""
    path, base = Path(path).resolve(), Path(base).resolve()
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------- prepared store


def write_clip(root: str | os.PathLike, clip_id: str, *, frames: np.ndarray, landmarks: np.ndarray,
               masks: np.ndarray, frame_index: np.ndarray, truth: dict[str, np.ndarray] | None = None) -> None:
    """Write one prepared clip's arrays (each file atomically)."""
    folder = Path(root) / CLIPS / clip_id
    save_npy(folder / FRAMES, np.ascontiguousarray(frames, dtype=np.uint8))
    save_npy(folder / LANDMARKS, np.asarray(landmarks, dtype=np.float32))
    save_npy(folder / MASKS, np.asarray(masks, dtype=np.uint8))
    save_npy(folder / FRAME_INDEX, np.asarray(frame_index, dtype=np.int32))
    if truth is not None:
        save_npz(folder / TRUTH, **truth)


def write_tables(root: str | os.PathLike, manifest: pd.DataFrame, videos: pd.DataFrame) -> None:
    write_text(Path(root) / MANIFEST, manifest.to_csv(index=False, lineterminator="\n"))
    write_text(Path(root) / VIDEOS, videos.to_csv(index=False, lineterminator="\n"))


class PreparedStore:
    """Read access to data/prepared: the manifest, and per clip its frames / masks / landmarks (memory-mapped)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._manifest: pd.DataFrame | None = None

    def manifest(self) -> pd.DataFrame:
        if self._manifest is None:
            path = self.root / MANIFEST
            if not path.is_file():
                raise StoreError(f"{path}: no prepared data; run the `prepare` stage first (dvc repro prepare)")
            self._manifest = pd.read_csv(path, keep_default_na=False)
        return self._manifest

    def videos(self) -> pd.DataFrame:
        return pd.read_csv(self.root / VIDEOS, keep_default_na=False)

    def clips(self, split: str | None = None, kind: str = "clip") -> pd.DataFrame:
        """Manifest rows of `kind` (clip | cross) in `split` (train | test | None: both)."""
        m = self.manifest()
        rows = m[m["kind"] == kind]
        if split is not None:
            rows = rows[rows["split"] == split]
        return rows

    def clip_dir(self, clip_id: str) -> Path:
        return self.root / CLIPS / clip_id

    def _array(self, clip_id: str, name: str, mmap: bool) -> np.ndarray:
        path = self.clip_dir(clip_id) / name
        if not path.is_file():
            raise StoreError(f"{path}: missing from the prepared store; re-run the `prepare` stage (dvc repro prepare -f)")
        return np.load(path, mmap_mode="r" if mmap else None)

    def frames(self, clip_id: str, mmap: bool = True) -> np.ndarray:
        return self._array(clip_id, FRAMES, mmap)

    def masks(self, clip_id: str, mmap: bool = True) -> np.ndarray:
        return self._array(clip_id, MASKS, mmap)

    def landmarks(self, clip_id: str) -> np.ndarray:
        return self._array(clip_id, LANDMARKS, False)

    def frame_index(self, clip_id: str) -> np.ndarray:
        return self._array(clip_id, FRAME_INDEX, False)

    def has_truth(self, clip_id: str) -> bool:
        return (self.clip_dir(clip_id) / TRUTH).is_file()

    def truth(self, clip_id: str) -> dict[str, np.ndarray]:
        """The renderer's labels of the stored frames (synthetic world only): expression, pose, gaze, identity_vector."""
        path = self.clip_dir(clip_id) / TRUTH
        if not path.is_file():
            raise ValueError(f"{self.clip_dir(clip_id)}: no renderer ground truth ({TRUTH}); labels exist for the "
                             f"synthetic world only")
        with np.load(path) as t:
            return {k: t[k] for k in t.files}

    def frame(self, clip_id: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame uint8 [S, S, 3], mask uint8 [S, S]) of one stored frame, copied out of short-lived maps: nothing
        stays mapped, so a reader's memory does not grow with the frames it has touched."""
        frames, masks = self.frames(clip_id), self.masks(clip_id)
        out = np.array(frames[i]), np.array(masks[i])
        del frames, masks
        return out


def identity_fingerprints(store: PreparedStore, split: str | None = None) -> dict[str, str]:
    """identity -> sha256 of its renderer identity vector (synthetic world only; {} for real videos): what a
    pre-trained toy network records of the faces it was trained on, so that a world can be checked for overlap."""
    import hashlib

    out: dict[str, str] = {}
    for rec in store.clips(split).to_dict("records"):
        if rec["identity"] not in out and store.has_truth(rec["clip_id"]):
            vector = np.ascontiguousarray(store.truth(rec["clip_id"])["identity_vector"], dtype=np.float32)
            out[rec["identity"]] = hashlib.sha256(vector.tobytes()).hexdigest()
    return out


@dataclass
class SplitArrays:
    """All stored frames of one split, concatenated in memory (the toy world's trainers; see IN_MEMORY_BUDGET)."""

    frames: np.ndarray  # uint8 [N, S, S, 3]
    masks: np.ndarray  # uint8 [N, S, S]: the Eq. 13 feature mask
    landmarks: np.ndarray  # float32 [N, 68, 2] in crop pixels
    clip_ids: np.ndarray  # str [N]
    identities: np.ndarray  # str [N]
    truth: dict[str, np.ndarray] | None = None  # synthetic world only: renderer's expression/pose/gaze [N, C]

    def __len__(self) -> int:
        return len(self.frames)


def load_split(prepared: str | os.PathLike, split: str, kind: str = "clip", max_frames: int | None = None,
               with_truth: bool = False) -> SplitArrays:
    """Concatenate the stored frames of every clip of `split` (train | test) and `kind` (clip | cross).

    For small worlds only: a split above IN_MEMORY_BUDGET bytes is refused (stream it with FrameDataset or
    TripletDataset). with_truth: also the renderer's per-frame labels (an error for clips without them)."""
    store = PreparedStore(prepared)
    rows = store.clips(split, kind)
    if rows.empty:
        raise ValueError(f"{prepared}: no prepared clips with split={split!r} and kind={kind!r}")
    size = int(store.frames(rows["clip_id"].iloc[0]).shape[1])
    n_total = int(rows["stored_frames"].sum()) if max_frames is None else min(int(rows["stored_frames"].sum()), max_frames)
    need = n_total * size * size * 4  # frames (3 bytes) + mask (1 byte) per pixel
    if need > IN_MEMORY_BUDGET:
        raise MemoryError(f"{prepared}: the {split} split would take {need / 2**30:.1f} GiB in memory (budget "
                          f"{IN_MEMORY_BUDGET / 2**30:.1f} GiB, REENACT_IN_MEMORY_BUDGET); stream it with "
                          f"pipeline.store.FrameDataset / TripletDataset instead")
    frames, masks, lms, ids, who = [], [], [], [], []
    truth: dict[str, list[np.ndarray]] = {k: [] for k in TRUTH_KEYS}
    for rec in rows.to_dict("records"):
        cid = rec["clip_id"]
        f = np.asarray(store.frames(cid))
        frames.append(f)
        if with_truth:
            t = store.truth(cid)
            for k in TRUTH_KEYS:
                truth[k].append(t[k])
        masks.append(store.masks(cid, mmap=False))
        lms.append(store.landmarks(cid))
        ids += [cid] * len(f)
        who += [rec["identity"]] * len(f)
        if max_frames is not None and sum(len(x) for x in frames) >= max_frames:
            break
    labels = {k: np.concatenate(v) for k, v in truth.items()} if with_truth else None
    out = SplitArrays(np.concatenate(frames), np.concatenate(masks), np.concatenate(lms), np.asarray(ids),
                      np.asarray(who), labels)
    if max_frames is not None:
        out = SplitArrays(*(a[:max_frames] for a in (out.frames, out.masks, out.landmarks, out.clip_ids, out.identities)),
                          None if labels is None else {k: v[:max_frames] for k, v in labels.items()})
    return out


# ----------------------------------------------------------------------------------- streaming datasets


def to_image(frame: np.ndarray) -> "torch.Tensor":
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1] (the generator's output range)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frame))
    return x.movedim(-1, -3).float().div(127.5).sub(1.0)


# The datasets are map-style datasets for torch's DataLoader (len + getitem; torch is imported only when an item
# is read, so that writers of the store, e.g. the renderer's worker processes, need not import it).


class FrameDataset:
    """Every stored frame of one split, one at a time: item = {"image" [3, S, S] in [-1, 1], "mask" [1, S, S],
    "identity" (index into `identities`), "clip" (index into `clip_ids`), "frame" (index in the clip)}.

    Only the manifest and a frame -> clip table live in memory (a few bytes per frame); the pixels are read per
    item from the clip's .npy files, so memory stays flat however large the store is. Works with any sampler,
    `DistributedSampler` included."""

    def __init__(self, prepared: str | os.PathLike, split: str, kind: str = "clip"):
        self.store = PreparedStore(prepared)
        rows = self.store.clips(split, kind)
        if rows.empty:
            raise ValueError(f"{prepared}: no prepared clips with split={split!r} and kind={kind!r}")
        self.clip_ids = rows["clip_id"].astype(str).to_numpy()
        self.identities, clip_identity = np.unique(rows["identity"].astype(str).to_numpy(), return_inverse=True)
        counts = rows["stored_frames"].astype(np.int64).to_numpy()
        self._clip_of = np.repeat(np.arange(len(rows)), counts)  # global frame -> clip
        self._start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # clip -> its first global frame
        self.identity_of = clip_identity[self._clip_of]  # global frame -> identity index

    def __len__(self) -> int:
        return len(self._clip_of)

    def locate(self, i: int) -> tuple[int, int]:
        """Global frame index -> (clip index, frame index inside the clip)."""
        c = int(self._clip_of[i])
        return c, int(i - self._start[c])

    def __getitem__(self, i: int) -> dict:
        import torch

        c, k = self.locate(int(i))
        frame, mask = self.store.frame(self.clip_ids[c], k)
        return {"image": to_image(frame), "mask": torch.from_numpy(mask).float()[None],
                "identity": int(self.identity_of[i]), "clip": c, "frame": k}


class TripletDataset:
    """The training triples of Sec. 3.2: item i = {"source": frame i, "driving_same": a random other frame of the
    same identity, "driving_other": a random frame of another identity}, each a FrameDataset item.

    The two drivings are drawn from a generator seeded by (seed, epoch, i), so an item is the same in whichever
    process reads it: a `DistributedSampler` over this dataset gives the same triples as one process. Call
    `set_epoch` (like the sampler's) to draw new pairings each epoch."""

    def __init__(self, prepared: str | os.PathLike, split: str = "train", seed: int = 0):
        self.frames = FrameDataset(prepared, split)
        if len(self.frames.identities) < 2:
            raise ValueError(f"{prepared}: the {split} split has one identity; triples need at least two")
        self.seed, self.epoch = int(seed), 0
        order = np.argsort(self.frames.identity_of, kind="stable")
        bounds = np.searchsorted(self.frames.identity_of[order], np.arange(len(self.frames.identities) + 1))
        self._by_identity = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]  # identity -> its global frames

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def pick(self, i: int) -> tuple[int, int, int]:
        """Global frame indices (source, same-identity driving, other-identity driving) of item i."""
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        ident = int(self.frames.identity_of[i])
        same = self._by_identity[ident]
        if len(same) > 1:  # another frame of the same identity (never the source itself)
            j = int(same[rng.integers(len(same) - 1)])
            j = j if j != i else int(same[-1])
        else:
            j = int(i)
        other = (ident + 1 + int(rng.integers(len(self._by_identity) - 1))) % len(self._by_identity)
        pool = self._by_identity[other]
        return int(i), j, int(pool[rng.integers(len(pool))])

    def __getitem__(self, i: int) -> dict[str, dict]:
        s, d1, d2 = self.pick(int(i))
        return {"source": self.frames[s], "driving_same": self.frames[d1], "driving_other": self.frames[d2]}
