"""The oracle (pipeline/oracle.py): Eq. 3's space fitted per frame with G fixed finds codes G itself rendered from,
leaves W_ID and G untouched in step 2, is deterministic and chunk-independent, refuses frames of another size; the
`oracle` stage writes reenact's videos, and the `evaluate` stage scores data/oracle as the reference row `oracle`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.models.encoder import HybridDecoder, motion_layers
from pipeline.models.stylegan2 import Generator
from pipeline.oracle import (OracleError, Settings, fit_motion, interpolate, keyframes, motion_dims, oracle_video,
                             psnr, render)
from pipeline.reenact import to_uint8
from pipeline.store import to_image
from tests.conftest import REPO, tiny_raw

SIZE = 16


def tiny_generator(seed: int = 0) -> tuple[Generator, list[int]]:
    torch.manual_seed(seed)
    G = Generator(SIZE, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)
    G.latent_avg.copy_(G.mean_latent(256)[0])
    with torch.no_grad():  # a random G's raw RGB overshoots [-1, 1] on a third of the pixels, which uint8 frames clip:
        for rgb in [G.to_rgb1, *G.to_rgbs]:  # shrunk, so that the codes that rendered a target are its best fit
            rgb.conv.weight.mul_(0.25)
    G.fused_modconv = False
    return G.eval(), motion_layers(G, "all", 5)


def known_video(G: Generator, layers: list[int], n: int = 6, hybrid: bool = True, seed: int = 1):
    """(W_ID, S_F, the source G(A(W_ID)), the targets G(A(W_ID) + S_F_t)) from codes drawn here: frames G can render
    exactly, so the fit's best is the codes themselves."""
    gen = torch.Generator().manual_seed(seed)
    decoder = HybridDecoder(G, layers, hybrid, SIZE)
    w = G.map(torch.randn(1, G.style_dim, generator=gen), truncation=0.7)
    w_id = G.broadcast(w)
    motion = [0.3 * torch.randn(n, d, generator=gen) for d in motion_dims(decoder)]
    with torch.no_grad():
        source = to_uint8(decoder(w_id, None))[0]
        targets = to_uint8(decoder(w_id.expand(n, -1, -1), motion))
    return w_id, motion, source, targets


FAST = Settings(steps_w=60, lr_w=0.05, key_every=1, key_steps=0, steps_s=60, lr_s=0.05, lambda_lpips=0.0)


def test_the_s_fit_finds_frames_g_rendered_from_known_codes():
    G, layers = tiny_generator()
    w_id, motion, _, targets = known_video(G, layers)
    decoder = HybridDecoder(G, layers, True, SIZE)
    with torch.no_grad():
        start = psnr(to_uint8(decoder(w_id.expand(len(targets), -1, -1), None)), targets)  # S_F = 0
    codes, history = fit_motion(decoder, w_id, to_image(targets), steps=80, lr=0.05)
    fitted = render(decoder, w_id, codes)
    assert history[-1] < 0.1 * history[0]
    assert psnr(fitted, targets) > 40 > start + 10, (start, psnr(fitted, targets))


def test_both_steps_reduce_the_loss_and_reach_the_target():
    G, layers = tiny_generator()
    _, _, source, targets = known_video(G, layers)
    decoder = HybridDecoder(G, layers, True, SIZE)
    with torch.no_grad():  # the start of step 1: latent_avg, and no motion
        start = psnr(to_uint8(decoder(G.broadcast(G.latent_avg[None]), None)).repeat(len(targets), 0), targets)
    fit = oracle_video(G, layers, True, source, targets, FAST)
    assert fit.w_history[-1] < 0.2 * fit.w_history[0] and fit.s_history[-1] < fit.s_history[0]
    assert fit.frames.shape == targets.shape and fit.frames.dtype == np.uint8
    assert psnr(fit.frames, targets) > 33 > start + 10, (start, psnr(fit.frames, targets))


def test_the_w_plus_ablation_space_and_the_key_frame_pass_fit_too():
    G, layers = tiny_generator()
    _, _, source, targets = known_video(G, layers, n=9, hybrid=False)
    keyed = Settings(steps_w=60, key_every=4, key_steps=40, key_lr=0.05, steps_s=10, lr_s=0.02)
    fit = oracle_video(G, layers, False, source, targets, keyed)
    assert [tuple(m.shape) for m in fit.motion] == [(9, G.style_dim)] * len(layers)  # W+ offsets
    assert len(fit.s_history) == 40 + 10 and psnr(fit.frames, targets) > 30


def test_step_2_leaves_w_id_and_g_untouched():
    G, layers = tiny_generator()
    w_id, _, source, targets = known_video(G, layers)
    before_w = w_id.clone()
    before_g = {k: v.clone() for k, v in G.state_dict().items()}
    fit = oracle_video(G, layers, True, source, targets, FAST, w_id=w_id)
    assert fit.w_history == [] and torch.equal(fit.w_id, before_w) and torch.equal(w_id, before_w)
    assert all(torch.equal(v, before_g[k]) for k, v in G.state_dict().items())
    assert psnr(fit.frames, targets) > 45  # the true W_ID: only S_F is left to find


def test_two_runs_are_byte_identical_and_chunking_does_not_change_the_fit():
    G, layers = tiny_generator()
    _, _, source, targets = known_video(G, layers)
    a = oracle_video(G, layers, True, source, targets, FAST)
    b = oracle_video(G, layers, True, source, targets, FAST)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert all(torch.equal(x, y) for x, y in zip(a.motion, b.motion)) and torch.equal(a.w_id, b.w_id)
    from dataclasses import replace

    chunked = oracle_video(G, layers, True, source, targets, replace(FAST, batch_size=2), w_id=a.w_id)
    assert all(torch.allclose(x, y, atol=1e-3) for x, y in zip(a.motion, chunked.motion))  # per-frame losses summed
    assert np.abs(chunked.frames.astype(int) - a.frames).max() <= 2


def test_frames_of_another_size_are_refused_clearly():
    G, layers = tiny_generator()
    _, _, source, targets = known_video(G, layers)
    with pytest.raises(OracleError, match=r"the target frames: expected uint8 frames \[N >= 1, 16, 16, 3\].*one size"):
        oracle_video(G, layers, True, source, np.zeros((3, 32, 32, 3), np.uint8), FAST)
    with pytest.raises(OracleError, match="the target frames: expected uint8"):
        oracle_video(G, layers, True, source, targets.astype(np.float32), FAST)
    with pytest.raises(OracleError, match="the source frame: .*square"):
        oracle_video(G, layers, True, source[:, :8], targets, FAST)
    with pytest.raises(OracleError, match=r"w_id must be \[1, 6, 16\]"):
        oracle_video(G, layers, True, source, targets, FAST, w_id=torch.zeros(2, 6, 16))
    with pytest.raises(ValueError, match="steps_s=-1"):
        Settings(steps_s=-1)


def test_key_frames_and_their_interpolation():
    assert list(keyframes(64, 16)) == [0, 16, 32, 47, 63]
    assert list(keyframes(5, 1)) == [0, 1, 2, 3, 4] and list(keyframes(2, 16)) == [0, 1]
    keys = np.array([0, 4, 8])
    codes = [torch.tensor([[0.0], [4.0], [0.0]])]
    out = interpolate(codes, keys, 9)[0][:, 0]
    assert out.tolist() == [0, 1, 2, 3, 4, 3, 2, 1, 0]


def test_unknown_and_bad_params_fail_with_the_key():
    from pipeline.config import ParamsError, validate_params

    with pytest.raises(ParamsError, match=r"oracle\.stepsw: unknown key; did you mean 'oracle\.steps_w'"):
        validate_params(tiny_raw(**{"oracle.stepsw": 3}))
    with pytest.raises(ParamsError, match=r"oracle\.protocols\.0: 'robustness' is not allowed"):
        validate_params(tiny_raw(**{"oracle.protocols": ["robustness"]}))
    with pytest.raises(ParamsError, match="nothing to fit"):
        validate_params(tiny_raw(**{"oracle.lambda_l2": 0.0, "oracle.lambda_lpips": 0.0}))
    p = validate_params(tiny_raw(**{"oracle.keyframes.every": 4}))
    assert Settings.from_section(p.oracle).key_every == 4


# ------------------------------------------------------------------------------------- the stages, end to end

ORACLE_FAST = {"oracle.steps_w": 5, "oracle.keyframes.steps": 3, "oracle.steps_s": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The tiny world through reenact (data ... finetune, reenact)."""
    from pipeline.config import validate_params
    from pipeline.stage import load_stage

    root = tmp_path_factory.mktemp("world")
    params = validate_params(tiny_raw(**ORACLE_FAST))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_ROOT", str(tmp_path_factory.getbasetemp() / "mlflow"))  # never the repo's store
        for name in ("data", "prepare", "analyzer", "generator", "pretrain", "finetune", "reenact"):
            load_stage(name).execute(params=params, root=root, progress=False)
    return root


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path_factory.getbasetemp() / "mlflow"))


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_oracle_stage_fits_reenacts_videos_and_evaluate_scores_them(world, monkeypatch):
    from pipeline.config import validate_params
    from pipeline.paths import GENERATOR_CHECKPOINT, METRICS, ORACLE, REENACTED
    from pipeline.stage import load_stage

    params = validate_params(tiny_raw(**ORACLE_FAST))
    g_before = (world / GENERATOR_CHECKPOINT).read_bytes()
    metrics = load_stage("oracle").execute(params=params, root=world, progress=False)
    assert (world / GENERATOR_CHECKPOINT).read_bytes() == g_before
    index = pd.read_csv(world / ORACLE / "index.csv", keep_default_na=False)
    reenacted = pd.read_csv(world / REENACTED / "index.csv", keep_default_na=False)
    for protocol, fitted_to in (("same", "driving"), ("cross", "ground_truth")):
        mine = index[index.protocol == protocol]
        theirs = reenacted[(reenacted.protocol == protocol) & (reenacted.adaptation == "none")]
        assert sorted(mine.name) == sorted(theirs.name) and set(mine.fitted_to) == {fitted_to}
        for row in theirs.itertuples():
            pred = np.load(world / ORACLE / mine.set_index("name").loc[row.name, "pred"])
            assert pred.shape == np.load(world / REENACTED / row.pred).shape and pred.dtype == np.uint8
    assert metrics["videos"] == {"same": 2, "cross": 2}
    assert set(metrics["fidelity"]["same"]) == {"psnr", "l1", "source_psnr"}
    text = (world / METRICS / "oracle.json").read_text()
    assert "seconds" not in text and str(world) not in text
    first = _tree(world / ORACLE)
    shutil.rmtree(world / ORACLE)
    load_stage("oracle").execute(params=params, root=world, progress=False)
    assert _tree(world / ORACLE) == first  # byte-identical on a re-run

    monkeypatch.chdir(world)  # the toy analyzer is found in the workspace
    load_stage("evaluate").execute(params=params, root=world, progress=False)
    same = json.loads((world / "metrics/eval_same_id.json").read_text())
    cross = json.loads((world / "metrics/eval_cross_id.json").read_text())
    rob = json.loads((world / "metrics/eval_robustness.json").read_text())
    assert {"copy_source", "copy_driving", "oracle"} <= set(same) and {"ground_truth", "oracle"} <= set(cross)
    assert "oracle" not in rob
    full = json.loads((world / "reports/evaluate/cross_id.json").read_text())
    assert set(full["references"]["oracle"]) == {"aggregate", "per_video"}
    assert sorted(full["references"]["oracle"]["per_video"]) == sorted(index[index.protocol == "cross"].name)
    # hand-computed: the oracle's L1 to the ground-truth cross render
    l1 = np.mean([np.abs(np.load(world / ORACLE / r.pred).astype(float)
                         - np.load(world / REENACTED / f"cross/target/{r.name}.npy")).mean() / 255
                  for r in index[index.protocol == "cross"].itertuples()])
    assert cross["oracle"]["l1_gt"]["mean"] == pytest.approx(l1, rel=1e-5)
    table = pd.read_csv(world / "reports/evaluate/per_video.csv")
    assert set(table.loc[table.adaptation == "oracle", "row"]) == {"oracle"}
    # its videos must be reenact's: a stale oracle names the stage to re-run
    stale = index[index.name != index.name.iloc[0]]
    stale.to_csv(world / ORACLE / "index.csv", index=False)
    from pipeline.evaluate import ReenactedError, evaluate_reenacted

    with pytest.raises(ReenactedError, match=r"oracle/index.csv: its same videos are not those of .*dvc repro oracle"):
        evaluate_reenacted(world / REENACTED, params, progress=False, oracle=world / ORACLE)
    # no oracle: no oracle row
    ev = evaluate_reenacted(world / REENACTED, validate_params(tiny_raw(**{"evaluate.metrics.same": ["l1"],
                            "evaluate.metrics.cross": ["l1_gt"], "evaluate.metrics.robustness": ["l1"]})),
                            progress=False, oracle=world / "nowhere")
    assert all("oracle" not in refs for refs in ev.references.values())


def test_an_empty_protocol_list_writes_an_empty_index(world):
    from pipeline.config import validate_params
    from pipeline.paths import ORACLE
    from pipeline.stage import load_stage

    params = validate_params(tiny_raw(**{"oracle.protocols": []}))
    metrics = load_stage("oracle").execute(params=params, root=world, progress=False)
    assert metrics["videos"] == {} and list(pd.read_csv(world / ORACLE / "index.csv").columns) == \
        ["protocol", "name", "pred", "fitted_to"]
    assert len(pd.read_csv(world / ORACLE / "index.csv")) == 0
