"""The one checkpoint format: plain data read with weights_only, atomic and byte-reproducible writes, exact
resume (weights, optimizer, scheduler, step, RNG), and errors that name the file and the fix."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.checkpoint import (Checkpoint, CheckpointError, load_checkpoint, load_state, restore_rng, rng_state,
                                 save_checkpoint)


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


def _step(model, opt, sched):
    """A step that draws from all three global RNGs, as training code does (noise, sampling, augmentation)."""
    x = torch.randn(16, 4) + float(np.random.rand()) + random.random()
    loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_resume_continues_exactly_as_if_never_stopped(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    model, opt, sched = _setup()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    for _ in range(10):
        _step(model, opt, sched)
    straight = [p.detach().clone() for p in model.parameters()]

    model, opt, sched = _setup()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    for _ in range(5):
        _step(model, opt, sched)
    save_checkpoint(tmp_path / "c.pt", Checkpoint("test-model", {"width": 8}, {"model": model.state_dict()},
                                                  {"adam": opt.state_dict()}, {"step_lr": sched.state_dict()},
                                                  step=5, rng=rng_state()))
    for _ in range(3):  # the process goes on drawing random numbers before it dies: resume must not depend on it
        _step(model, opt, sched)

    ckpt = load_checkpoint(tmp_path / "c.pt", "test-model")
    model, opt, sched = _setup()
    load_state(model, ckpt, "model", "c.pt")
    opt.load_state_dict(ckpt.optimizers["adam"])
    sched.load_state_dict(ckpt.schedulers["step_lr"])
    restore_rng(ckpt.rng)
    assert ckpt.step == 5 and ckpt.config == {"width": 8}
    for _ in range(5):
        _step(model, opt, sched)
    for a, b in zip(straight, model.parameters()):
        assert torch.equal(a, b)


def test_writes_are_byte_reproducible_and_atomic(tmp_path):
    model, _, _ = _setup()
    ckpt = Checkpoint("test-model", {"a": [1, 2.5, "x", None]}, {"model": model.state_dict()}, extra={"t": torch.ones(2)})
    save_checkpoint(tmp_path / "a.pt", ckpt)
    save_checkpoint(tmp_path / "sub" / "b.pt", ckpt)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    with pytest.raises(TypeError, match="not plain data"):
        save_checkpoint(tmp_path / "c.pt", Checkpoint("test-model", {"p": tmp_path}, {}))
    assert not (tmp_path / "c.pt").exists() and not list(tmp_path.glob(".*tmp*"))


def test_errors_name_the_file_and_the_fix(tmp_path):
    model, _, _ = _setup()
    with pytest.raises(CheckpointError, match="no such checkpoint; train it first"):
        load_checkpoint(tmp_path / "none.pt", "test-model", hint="train it first")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02junk")
    with pytest.raises(CheckpointError, match="junk.pt: cannot be read as a torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", "test-model")
    torch.save({"g_ema": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a reenact-checkpoint checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt", "test-model")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled_module.pt")  # pickled classes: refused, never run
    with pytest.raises(CheckpointError, match="references torch.nn.*never run"):
        load_checkpoint(tmp_path / "pickled_module.pt", "test-model")
    save_checkpoint(tmp_path / "other.pt", Checkpoint("encoder", {}, {"model": model.state_dict()}))
    with pytest.raises(CheckpointError, match="a checkpoint of kind 'encoder', expected 'test-model'"):
        load_checkpoint(tmp_path / "other.pt", "test-model")
    wider = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    ckpt = load_checkpoint(tmp_path / "other.pt", "encoder")
    with pytest.raises(CheckpointError, match=r"do not fit.*shape mismatches.*0.weight: found \[8, 4\], expected \[16, 4\]"):
        load_state(wider, ckpt, "model", "other.pt")
    with pytest.raises(CheckpointError, match="no state for 'ema'"):
        load_state(model, ckpt, "ema", "other.pt")
