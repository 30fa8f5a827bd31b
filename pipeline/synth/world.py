"""Render a whole synthetic world to disk: videos, per-frame truth, identities, cross-identity renders, index.

Layout of `out_dir` (built in a temporary folder and moved into place whole):
    videos/<identity>/<clip>.mp4        ordinary clips, clip id <identity>_cNN
    videos/<A>/<A>_x_<B>.mp4            cross renders: identity A with exactly clip B's motion
    truth/<clip>.npz                    render_clip's truth dict + identity_id, motion_from
    identities.json                     {identity_id: {parameter: value}}
    index.csv (pipeline.store.RAW_INDEX) path,identity,clip,kind,motion_from,truth,fps,n_frames
    world.json                          the generation settings and the summary

Randomness: identity i draws from default_rng([seed, 0, i]), the motion of its clip j from
default_rng([seed, 1, i, j]), the cross partners of that clip from default_rng([seed, 2, i, j]); so adding
identities or clips never changes the existing ones (cross partners are drawn among `cross_among`).
"""
from __future__ import annotations

import csv
import io
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Collection

import numpy as np

from pipeline.io import atomic_dir, save_npz, write_json, write_text
from pipeline.store import raw_index_path
from pipeline.synth.face import Identity, sample_identity
from pipeline.synth.motion import Motion, sample_motion
from pipeline.synth.render import render_clip
from pipeline.video import write_video

INDEX_COLUMNS = ("path", "identity", "clip", "kind", "motion_from", "truth", "fps", "n_frames")
_PARALLEL_MIN_FRAMES = 2000  # below this, starting worker processes costs more than it saves


def identity_name(i: int) -> str:
    return f"id{i:04d}"


def clip_name(identity_id: str, j: int) -> str:
    return f"{identity_id}_c{j:02d}"


def cross_name(identity_id: str, source_clip: str) -> str:
    return f"{identity_id}_x_{source_clip}"


def _render_job(job: dict) -> tuple[str, int]:
    """Render one clip into the world folder `job["root"]`; returns (clip id, frames)."""
    root = Path(job["root"])
    identity = Identity(job["identity_id"], job["identity_vector"])
    motion = Motion(**job["motion"])
    frames, truth = render_clip(identity, motion, job["resolution"])
    write_video(root / job["video"], frames, job["fps"])
    save_npz(root / job["truth"], **truth, identity_id=np.array(identity.id), motion_from=np.array(job["motion_from"]))
    return job["clip"], len(frames)


def generate_world(
    out_dir: Path,
    *,
    seed: int,
    n_identities: int,
    clips_per_identity: int,
    frames_per_clip: int,
    resolution: int,
    fps: float,
    cross_per_clip: int,
    cross_among: Collection[str] | None = None,  # identity ids whose clips get cross renders, with partners drawn
    # among them (the held-out identities, since only evaluation uses cross renders); None: all identities
    progress: bool = False,
    workers: int | None = None,  # processes; None: one per CPU core (at most 8), 1 for small worlds
) -> dict:
    """Render the world into `out_dir` (replaced atomically) and return a summary."""
    if n_identities < 1 or clips_per_identity < 1 or frames_per_clip < 1:
        raise ValueError("n_identities, clips_per_identity and frames_per_clip must be >= 1")
    among = {identity_name(i) for i in range(n_identities)} if cross_among is None else set(cross_among)
    if cross_per_clip and not 0 <= cross_per_clip <= len(among) - 1:
        raise ValueError(f"cross_per_clip={cross_per_clip} needs at least {cross_per_clip + 1} identities to draw "
                         f"cross partners from, got {len(among)}")
    if resolution % 2:
        raise ValueError(f"resolution must be even (H.264), got {resolution}")
    start = time.perf_counter()
    identities = [sample_identity(np.random.default_rng([seed, 0, i]), identity_name(i)) for i in range(n_identities)]

    # plan every clip: (identity, motion, clip id, kind, motion_from)
    plan = []
    for i, identity in enumerate(identities):
        for j in range(clips_per_identity):
            clip = clip_name(identity.id, j)
            motion = sample_motion(np.random.default_rng([seed, 1, i, j]), frames_per_clip, fps)
            plan.append((identity, motion, clip, "clip", clip))
            if cross_per_clip and identity.id in among:
                others = [o for o in range(n_identities) if o != i and identities[o].id in among]
                chosen = np.random.default_rng([seed, 2, i, j]).choice(others, size=cross_per_clip, replace=False)
                for o in sorted(int(c) for c in chosen):
                    plan.append((identities[o], motion, cross_name(identities[o].id, clip), "cross", clip))

    rows = []
    with atomic_dir(out_dir) as tmp:
        jobs = []
        for identity, motion, clip, kind, motion_from in plan:
            video = f"videos/{identity.id}/{clip}.mp4"
            truth = f"truth/{clip}.npz"
            jobs.append({
                "root": str(tmp), "identity_id": identity.id, "identity_vector": identity.vector, "motion": motion.as_dict(),
                "clip": clip, "motion_from": motion_from, "resolution": resolution, "fps": fps, "video": video, "truth": truth,
            })
            rows.append({"path": video, "identity": identity.id, "clip": clip, "kind": kind, "motion_from": motion_from,
                         "truth": truth, "fps": fps, "n_frames": frames_per_clip})
        (tmp / "truth").mkdir()
        for identity in identities:
            (tmp / "videos" / identity.id).mkdir(parents=True)
        total_frames = len(jobs) * frames_per_clip
        if workers is None:
            workers = 1 if total_frames < _PARALLEL_MIN_FRAMES else min(os.cpu_count() or 1, 8)
        workers = max(1, min(int(workers), len(jobs)))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total_frames, desc="synthetic world", unit="frame")
        if workers == 1:
            results = map(_render_job, jobs)
            pool = None
        else:
            # spawn: safe even when the caller has threads (torch) running
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            results = pool.map(_render_job, jobs, chunksize=1)
        try:
            for _, n in results:
                if bar is not None:
                    bar.update(n)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if bar is not None:
                bar.close()

        write_json(tmp / "identities.json", {identity.id: identity.as_dict() for identity in identities})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(raw_index_path(tmp), buffer.getvalue())
        seconds = time.perf_counter() - start
        n_clips = sum(r["kind"] == "clip" for r in rows)
        summary = {
            "identities": n_identities,
            "clips": n_clips,
            "cross_clips": len(rows) - n_clips,
            "videos": len(rows),
            "frames": total_frames,
            "resolution": resolution,
            "fps": fps,
            "seconds": round(seconds, 3),
            "frames_per_second": round(total_frames / max(seconds, 1e-9), 1),
        }
        settings = {"seed": seed, "n_identities": n_identities, "clips_per_identity": clips_per_identity,
                    "frames_per_clip": frames_per_clip, "resolution": resolution, "fps": fps, "cross_per_clip": cross_per_clip,
                    "cross_among": sorted(among)}
        # Timings stay out of the folder (only in the returned summary): DVC outputs must be reproducible.
        counts = {k: v for k, v in summary.items() if k not in ("seconds", "frames_per_second")}
        write_json(tmp / "world.json", {"settings": settings, "summary": counts})
    return summary
