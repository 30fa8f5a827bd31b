"""The prepared store: file names in one place, streaming datasets, Sec. 3.2's triples under a
DistributedSampler, and memory that stays flat when the store is larger than the reader's budget."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader, DistributedSampler

from pipeline.store import (FrameDataset, PreparedStore, StoreError, TripletDataset, load_split, write_clip,
                            write_tables)
from tests.conftest import REPO


def make_store(root, identities=4, clips=2, frames=6, size=8, split="train"):
    """A store whose every pixel encodes (clip, frame): frame k of clip c is filled with (10 * c + k) mod 256."""
    rows = []
    for i in range(identities):
        for j in range(clips):
            c = i * clips + j
            clip_id = f"id{i}_c{j}_t0"
            pixels = np.stack([np.full((size, size, 3), (10 * c + k) % 256, np.uint8) for k in range(frames)])
            write_clip(root, clip_id, frames=pixels, landmarks=np.zeros((frames, 68, 2)),
                       masks=np.ones((frames, size, size)), frame_index=np.arange(frames))
            rows.append({"clip_id": clip_id, "identity": f"id{i}", "clip": f"id{i}_c{j}", "kind": "clip",
                         "split": split, "stored_frames": frames})
    write_tables(root, pd.DataFrame(rows), pd.DataFrame([{"video": "x"}]))
    return rows


def _value(item) -> int:
    return int(round((item["image"][0, 0, 0].item() + 1) * 127.5))


def test_frame_dataset_streams_every_frame_once(tmp_path):
    make_store(tmp_path)
    ds = FrameDataset(tmp_path, "train")
    assert len(ds) == 4 * 2 * 6
    values = [_value(ds[i]) for i in range(len(ds))]
    assert values == [10 * c + k for c in range(8) for k in range(6)]
    item = ds[13]
    assert item["image"].shape == (3, 8, 8) and item["mask"].shape == (1, 8, 8)
    assert (item["clip"], item["frame"]) == (2, 1) and ds.identities[item["identity"]] == "id1"
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 8, 8)


def test_triples_follow_section_3_2(tmp_path):
    make_store(tmp_path)
    ds = TripletDataset(tmp_path, "train", seed=3)
    for i in range(len(ds)):
        s, d1, d2 = ds.pick(i)
        ident = ds.frames.identity_of
        assert s == i and d1 != i and ident[d1] == ident[i] and ident[d2] != ident[i]
    assert [ds.pick(i) for i in range(10)] == [ds.pick(i) for i in range(10)]  # deterministic per item
    before = [ds.pick(i) for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds.pick(i) for i in range(len(ds))] != before  # new pairings each epoch
    item = ds[7]
    assert set(item) == {"source", "driving_same", "driving_other"} and _value(item["source"]) == 11


def test_distributed_sampler_shards_give_the_single_process_triples(tmp_path):
    make_store(tmp_path)
    ds = TripletDataset(tmp_path, "train", seed=0)
    ds.set_epoch(2)
    single = {i: ds.pick(i) for i in range(len(ds))}
    seen = {}
    for rank in range(3):
        sampler = DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True, seed=0, drop_last=False)
        sampler.set_epoch(2)
        for i in sampler:
            seen[i] = ds.pick(i)
    assert seen == single


def test_load_split_refuses_a_split_over_the_memory_budget(tmp_path, monkeypatch):
    make_store(tmp_path)
    assert len(load_split(tmp_path, "train")) == 48
    monkeypatch.setattr("pipeline.store.IN_MEMORY_BUDGET", 1000)
    with pytest.raises(MemoryError, match="stream it with.*FrameDataset"):
        load_split(tmp_path, "train")


def test_missing_store_and_missing_clip_file_name_the_fix(tmp_path):
    with pytest.raises(StoreError, match="dvc repro prepare"):
        FrameDataset(tmp_path / "nowhere", "train")
    make_store(tmp_path)
    (tmp_path / "clips" / "id0_c0_t0" / "frames.npy").unlink()
    with pytest.raises(StoreError, match="frames.npy.*prepare"):
        FrameDataset(tmp_path, "train")[0]
    assert PreparedStore(tmp_path).clips("test").empty


def test_reading_a_store_larger_than_the_budget_keeps_memory_flat(tmp_path):
    """~190 MB of frames read through a DataLoader by a process whose resident memory may grow by 60 MB at most."""
    make_store(tmp_path, identities=16, clips=4, frames=64, size=112)  # 64 clips x 64 x 112 x 112 x 3 = 154 MB + masks
    code = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(REPO)!r})
        import torch
        from torch.utils.data import DataLoader
        from pipeline.store import TripletDataset
        torch.set_num_threads(1)  # as in a DataLoader worker: tiny per-item ops, no thread pool
        ds = TripletDataset({str(tmp_path)!r}, "train")
        loader = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        total = 0
        for batch in loader:
            total += int(batch["source"]["image"].shape[0])
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024
        print(total, round(grown, 1))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    total, grown = out.stdout.split()
    store_mb = sum(p.stat().st_size for p in tmp_path.rglob("*.npy")) / 2**20
    assert int(total) == 16 * 4 * 64 and store_mb > 150
    assert float(grown) < 60, f"peak RSS grew by {grown} MB reading a {store_mb:.0f} MB store"
