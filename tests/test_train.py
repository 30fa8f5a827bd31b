"""Stages `pretrain` and `finetune` on the tiny world: outputs, F frozen in finetune, exact resume after SIGKILL,
resume bookkeeping, DDP on 2 CPU processes against one process, the W+ ablation, missing assets."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline.checkpoint import load_checkpoint
from pipeline.config import validate_params
from pipeline.paths import ENCODER_CHECKPOINT, ENCODER_PRETRAIN, METRICS, PREPARED, REPORTS, TRAIN_STATE
from pipeline.stage import load_stage
from pipeline.train import ENCODER_KIND, TRAINING_KIND, train_encoder
from tests.conftest import REPO, TINY, tiny_raw

UPSTREAM = ("data", "prepare", "analyzer", "generator")  # dvc.yaml's order


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The tiny world through data, prepare, generator and analyzer (what the training stages read)."""
    root = tmp_path_factory.mktemp("world")
    params = validate_params(tiny_raw())
    for name in UPSTREAM:
        load_stage(name).execute(params=params, root=root, progress=False)
    return root


@pytest.fixture(scope="module")
def mlflow_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(autouse=True)
def one_mlflow_store(mlflow_root, monkeypatch):
    """Every run of this module logs to one MLflow store (as under DVC, which sets DVC_ROOT): creating a store
    per workspace costs seconds."""
    monkeypatch.setenv("DVC_ROOT", str(mlflow_root))


def _workspace(world: Path, tmp: Path, raw: dict | None = None) -> Path:
    """A fresh workspace with the world's upstream outputs (and params.yaml / dvc.yaml, to run as DVC does)."""
    for rel in (PREPARED, Path("models")):
        shutil.copytree(world / rel, tmp / rel)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw or tiny_raw()))
    (tmp / "dvc.yaml").write_text("stages: {}\n")
    return tmp


def _run(stage: str, root: Path, **overrides) -> dict:
    return load_stage(stage).execute(params=validate_params(tiny_raw(**overrides)), root=root, progress=False)


def test_pretrain_and_finetune_write_their_outputs_and_finetune_freezes_f(world, tmp_path, capfd):
    root = _workspace(world, tmp_path)
    metrics = _run("pretrain", root)
    assert set(metrics["heldout"]) >= {"self_psnr", "reenact_l1", "copy_source_l1", "cross_id_to_source",
                                       "cross_id_to_driver"}
    assert metrics["steps"] == 4 and "loss" in metrics["final"]
    history = pd.read_csv(root / METRICS / "pretrain_history.csv")
    assert list(history["step"]) == [1, 2, 3, 4]
    expected = {"train/loss", "train/loss_self", "train/loss_reenact", "train/loss_id", "train/loss_id_source",
                "train/loss_id_cross", "train/loss_w_id", "train/loss_reg", "train/loss_reg_w", "train/loss_reg_s",
                "train/loss_f", "train/loss_d", "train/loss_disc", "train/loss_self_l2", "train/loss_self_lpips",
                "train/loss_self_gv", "train/lr"}
    assert expected <= set(history.columns)
    for name in ("samples.png", "losses.png"):
        assert (root / REPORTS / "pretrain" / name).is_file()
    pre = load_checkpoint(root / ENCODER_PRETRAIN, ENCODER_KIND)
    assert pre.rng is None and pre.optimizers == {} and set(pre.state) == {"encoder", "discriminator"}
    state = load_checkpoint(root / TRAIN_STATE / "pretrain" / "last.pt", TRAINING_KIND)
    assert state.step == 4 and set(state.optimizers) == {"encoder", "discriminator"} and state.rng is not None
    assert (root / TRAIN_STATE / ".gitignore").read_text() == "*\n"

    _run("finetune", root)
    fine = load_checkpoint(root / ENCODER_CHECKPOINT, ENCODER_KIND)
    a, b = pre.state["encoder"], fine.state["encoder"]
    f_keys = [k for k in a if k.startswith(("input_layer.", "body.", "latlayer"))]
    heads = [k for k in a if k.startswith(("id_heads.", "motion_heads."))]
    assert f_keys and all(torch.equal(a[k], b[k]) for k in f_keys)  # F frozen (BatchNorm statistics too)
    assert any(not torch.equal(a[k], b[k]) for k in heads)  # E_ID / E_F trained
    assert (root / METRICS / "finetune_history.csv").is_file()


def test_finetune_needs_pretrain(world, tmp_path):
    root = _workspace(world, tmp_path)
    with pytest.raises(Exception, match="pretrain"):
        _run("finetune", root)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_bytes(world, tmp_path):
    """SIGKILL mid-way, re-run the stage: it resumes from the last checkpoint and ends bit-identical to an
    uninterrupted run (same machine, same thread count)."""
    overrides = {"pretrain.iters": 16, "pretrain.checkpoint_every": 3}
    ref = _workspace(world, tmp_path / "ref", tiny_raw(**overrides))
    _run("pretrain", ref, **overrides)

    run = _workspace(world, tmp_path / "killed", tiny_raw(**overrides))
    # the same intra-op thread count as this process (an earlier test may have changed it): float reductions, and
    # so the bytes, depend on it (README, "Reproducibility")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "stages.pretrain"], cwd=run, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / TRAIN_STATE / "pretrain" / "last.pt"
    deadline = time.time() + 120
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    step = load_checkpoint(state, TRAINING_KIND).step
    assert 3 <= step < 16 and not (run / ENCODER_PRETRAIN).exists()  # killed mid-way

    _run("pretrain", run, **overrides)
    for rel in (ENCODER_PRETRAIN, METRICS / "pretrain.json", METRICS / "pretrain_history.csv"):
        assert (run / rel).read_bytes() == (ref / rel).read_bytes(), rel


@pytest.mark.slow
def test_resume_only_with_the_same_settings_and_raising_iters_continues(world, tmp_path, capfd):
    root = _workspace(world, tmp_path / "a")
    _run("pretrain", root)
    capfd.readouterr()
    _run("pretrain", root, **{"loss.lambda_id": 0.5})
    assert "not resuming" in capfd.readouterr().err  # another loss weight: a fresh start
    _run("pretrain", root, **{"loss.lambda_id": 0.5, "pretrain.iters": 6})
    assert "resuming from step 4" in capfd.readouterr().err
    fresh = _workspace(world, tmp_path / "b")
    _run("pretrain", fresh, **{"loss.lambda_id": 0.5, "pretrain.iters": 6})
    assert (root / ENCODER_PRETRAIN).read_bytes() == (fresh / ENCODER_PRETRAIN).read_bytes()


def test_the_wplus_ablation_trains_w_offsets(world, tmp_path):
    root = _workspace(world, tmp_path)
    out = train_encoder("pretrain", validate_params(tiny_raw(**{"model.hybrid": False, "pretrain.iters": 2})), root,
                        progress=False)
    style_dim = TINY["generator.style_dim"]
    ck = out.checkpoint
    assert ck.config["hybrid"] is False and set(ck.config["encoder"]["motion_dims"]) == {style_dim}
    assert [r["step"] for r in out.history] == [1, 2]


def test_a_term_with_weight_0_is_not_computed(world, tmp_path):
    """lambda_id 0 and lambda_lpips 0: no ID or LPIPS term, and the analyzer they would need is never loaded."""
    root = _workspace(world, tmp_path)
    (root / "models" / "analyzer.pt").unlink()
    out = train_encoder("pretrain", validate_params(tiny_raw(**{"loss.lambda_id": 0, "loss.lambda_lpips": 0,
                                                            "pretrain.iters": 2})), root, progress=False)
    columns = set(out.history[-1])
    assert "train/loss_id" not in columns and "train/loss_self_lpips" not in columns
    assert {"train/loss_self_l2", "train/loss_self_gv", "train/loss_w_id"} <= columns
    assert "cross_id_to_source" not in out.metrics["heldout"]


def test_only_the_encoder_stages_and_evaluate_read_the_loss_section():
    """So `dvc exp run -S loss.lambda_id=0.5` re-runs pretrain and finetune and nothing upstream (`evaluate`, downstream
    anyway, reads `loss.id_reg` to name the ablation row)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    readers = sorted(name for name, st in stages.items() if any(str(p).split(".")[0] == "loss" for p in st.get("params", [])))
    assert readers == ["evaluate", "finetune", "pretrain"]
    assert "models/encoder_pretrain.pt" in stages["finetune"]["deps"]


def test_a_missing_lpips_asset_stops_before_training(world, tmp_path):
    from pipeline.assets import AssetError

    root = _workspace(world, tmp_path)
    missing = tmp_path / "nowhere" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(AssetError, match="alexnet-owt-7be5be79.pth"):
        _run("pretrain", root, **{"loss.lpips_net": "lpips", "assets.lpips_alexnet.path": str(missing)})
    assert not (root / TRAIN_STATE).exists()
    logged = load_stage("pretrain").execute(params=validate_params(tiny_raw(**{"loss.lpips_net": "lpips"})), root=root,
                                            dry_run=True)
    assert list(logged["assets"]) == ["lpips_alexnet"]


# ------------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world_size: int, port: int, root: str, raw: dict, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    result = train_encoder("pretrain", validate_params(raw), Path(root), progress=False)
    torch.save(result.state, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ddp_processes_stay_identical_and_match_one_process(world, tmp_path):
    """2 CPU processes (gloo) with a global batch of 4 = one process with the same global batch in 2 micro-batches
    (grad_accum 2): the same micro-batches, the same BatchNorm statistics, gradients averaged the same way."""
    import torch.multiprocessing as mp

    overrides = {"pretrain.iters": 3, "pretrain.batch_size": 4, "pretrain.checkpoint_every": 100, "loss.r1_every": 2}
    ddp_root = _workspace(world, tmp_path / "ddp", tiny_raw(**overrides))
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(ddp_root), tiny_raw(**overrides), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    one_root = _workspace(world, tmp_path / "one", tiny_raw(**overrides, **{"pretrain.grad_accum": 2}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        one = train_encoder("pretrain", validate_params(tiny_raw(**overrides, **{"pretrain.grad_accum": 2})), one_root,
                            progress=False).state
    finally:
        torch.set_num_threads(threads)
    params = {k for k, v in r0["encoder"].items() if v.is_floating_point() and "running_" not in k}
    for net in ("encoder", "discriminator"):
        for k in r0[net]:
            if net == "discriminator" or k in params:
                assert torch.equal(r0[net][k], r1[net][k]), (net, k)  # the ranks agree bit for bit
                assert torch.allclose(r0[net][k], one[net][k], rtol=1e-4, atol=1e-5), (net, k)


@pytest.mark.gpu
def test_bf16_channels_last_on_gpu(world, tmp_path):
    root = _workspace(world, tmp_path)
    out = train_encoder("pretrain", validate_params(tiny_raw(**{"pretrain.iters": 3, "pretrain.device": "cuda",
                                                           "pretrain.precision": "bf16"})), root, progress=False)
    assert out.tags["precision"] == "bf16" and out.tags["device"].startswith("cuda")
    assert all(torch.isfinite(torch.tensor(v)) for r in out.history for k, v in r.items() if k != "step")


def _ship(world: Path, tmp: Path, ck_path: Path, extra: dict | None = None) -> tuple[Path, dict]:
    """The pretrain output at ck_path shipped as an asset (tmp/encoder_asset.pt) and the params that load it."""
    from pipeline.assets import sha256_of
    from pipeline.checkpoint import save_checkpoint
    from pipeline.train import shipped_encoder

    ck = shipped_encoder(load_checkpoint(ck_path, ENCODER_KIND), world / PREPARED, {"steps": 4}, [{"step": 1}])
    ck.extra.update(extra or {})
    asset = tmp / "encoder_asset.pt"
    save_checkpoint(asset, ck)
    over = {"pretrain.source": "native", "pretrain.checkpoint": "tiny_encoder",
            "assets.tiny_encoder": {"path": str(asset), "sha256": sha256_of(asset), "source": "a test's own run",
                                    "used_by": ["pretrain"]}}
    return asset, over


def test_a_shipped_encoder_loads_byte_for_byte_and_is_checked(world, tmp_path):
    trained = _workspace(world, tmp_path / "trained")
    _run("pretrain", trained)
    asset, over = _ship(world, tmp_path, trained / ENCODER_PRETRAIN)
    root = _workspace(world, tmp_path / "native")
    metrics = _run("pretrain", root, **over)
    assert (root / ENCODER_PRETRAIN).read_bytes() == asset.read_bytes()
    assert metrics["source"] == "native" and metrics["checkpoint"] == "tiny_encoder" and metrics["steps"] == 4
    assert metrics["heldout"]["self_psnr"] > 0
    assert list(pd.read_csv(root / METRICS / "pretrain_history.csv")["step"]) == [1]
    _run("finetune", root, **over)  # finetune starts from it
    assert load_checkpoint(root / ENCODER_CHECKPOINT, ENCODER_KIND).config["stage"] == "finetune"

    # another model section: the heads do not fit, and the error names the key and the fix
    with pytest.raises(ValueError, match=r"model\.hybrid.*pretrain\.source=train"):
        _run("pretrain", _workspace(world, tmp_path / "hybrid"), **over, **{"model.hybrid": False})


def test_a_shipped_encoder_that_saw_a_held_out_identity_is_refused(world, tmp_path):
    from pipeline.store import PreparedStore, identity_fingerprints

    trained = _workspace(world, tmp_path / "trained")
    _run("pretrain", trained)
    held_out = sorted(identity_fingerprints(PreparedStore(world / PREPARED), "test").values())[:1]
    _, over = _ship(world, tmp_path, trained / ENCODER_PRETRAIN, {"world": {"identity_fingerprints": held_out}})
    root = _workspace(world, tmp_path / "native")
    with pytest.raises(ValueError, match="holds out for evaluation"):
        _run("pretrain", root, **over)
    assert not (root / ENCODER_PRETRAIN).exists()


def test_the_lr_schedule_by_hand():
    from types import SimpleNamespace

    from pipeline.train import learning_rate

    s = SimpleNamespace(lr=1e-3, lr_schedule="cosine", lr_final=0.1, warmup=10, iters=110)
    assert learning_rate(s, 5) == pytest.approx(5e-4)  # half-way up the ramp
    assert learning_rate(s, 10) == pytest.approx(1e-3)  # end of warm-up = start of the cosine
    assert learning_rate(s, 60) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way: cos(pi / 2) = 0
    assert learning_rate(s, 110) == pytest.approx(1e-4)  # the end: lr * lr_final
    assert learning_rate(SimpleNamespace(lr=1e-3, lr_schedule="constant", lr_final=0.0, warmup=0, iters=5), 5) == 1e-3


def test_pretrain_on_a_world_of_its_own(world, tmp_path, capfd):
    from pipeline.store import PreparedStore, identity_fingerprints

    root = _workspace(world, tmp_path)
    own = {"seed": 77, "n_identities": 6, "clips_per_identity": 2, "frames_per_clip": 8, "validation_fraction": 0.34}
    metrics = _run("pretrain", root, **{"pretrain.world": own})
    (folder,) = (root / TRAIN_STATE / "pretrain").glob("world-*")
    store = PreparedStore(folder / "prepared")
    assert set(store.clips("train")["identity"]) and not (set(identity_fingerprints(store).values()) &
                                                          set(identity_fingerprints(PreparedStore(root / PREPARED)).values()))
    assert any(k.startswith("checkpoints/pretrain/world-") for k in metrics["inputs"])
    assert metrics["heldout"]["triples"] > 0  # scored on the evaluation world's held-out identities
    stamp = (folder / "prepared" / "manifest.csv").stat().st_mtime_ns
    capfd.readouterr()
    _run("pretrain", root, **{"pretrain.world": own, "pretrain.iters": 5})  # resumes on the same rendered world
    assert "resuming from step 4" in capfd.readouterr().err
    assert (folder / "prepared" / "manifest.csv").stat().st_mtime_ns == stamp
