"""Re-enactment (Eq. 3, Eq. 4) against a hand-written reading of the equations, streaming under a memory cap,
checkpoint checks, and the `reenact` stage's output contract (what `evaluate` reads) on the tiny world."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from pipeline.config import validate_params
from pipeline.edits import Direction, EditSchedule
from pipeline.models.encoder import HybridEncoder, encoder_config, motion_layers
from pipeline.models.stylegan2 import Generator
from pipeline.models.stylegan2_formats import save_native
from pipeline.reenact import Models, ReenactError, Reenactor, load_models, to_uint8
from pipeline.store import to_image
from pipeline.train import ENCODER_KIND
from tests.conftest import REPO, TINY, tiny_raw

SIZE = 32


def tiny_networks(seed: int = 0, size: int = SIZE) -> tuple[Generator, HybridEncoder, list[int], dict]:
    """A small random G and encoder whose motion heads are NOT zero (so that S_F does something)."""
    torch.manual_seed(seed)
    G = Generator(size, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)
    G.latent_avg.copy_(G.mean_latent(256)[0])
    layers = motion_layers(G, "all", 6)
    cfg = encoder_config(G, layers, True, size, [1, 1, 1, 1], [16, 16, 16, 16])
    E = HybridEncoder(**cfg)
    E.latent_avg.copy_(G.latent_avg)
    with torch.no_grad():
        for head in E.motion_heads:
            head.linear.weight.normal_()
    return G.eval(), E.eval(), layers, cfg


def tiny_models(seed: int = 0) -> Models:
    G, E, layers, _ = tiny_networks(seed)
    for p in E.parameters():
        p.requires_grad_(False)
    G.fused_modconv = False
    return Models(G, E, layers, True, SIZE, torch.device("cpu"))


def save_tiny_checkpoints(folder: Path, seed: int = 0, generator_seed: int | None = None) -> tuple[Path, Path]:
    """models/generator.pt and models/encoder.pt as the pipeline writes them (generator_seed: a G other than the
    one the encoder was trained for)."""
    G, E, layers, cfg = tiny_networks(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_native(tiny_networks(generator_seed)[0] if generator_seed is not None else G, folder / "generator.pt")
    save_checkpoint(folder / "encoder.pt", Checkpoint(
        kind=ENCODER_KIND, config={"encoder": cfg, "layers": layers, "hybrid": True, "generator": dict(G.config)},
        state={"encoder": E.state_dict()}))
    return folder / "generator.pt", folder / "encoder.pt"


def random_frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def eq3_by_hand(models: Models, source: np.ndarray, driving: np.ndarray, offsets: torch.Tensor | None = None):
    """G(A(W_ID^S [+ W_edit]) + S_F^D) written out: StyleSpace codes of every layer from the affine maps, S_F added
    on the motion layers, one synthesis call for the whole video."""
    G, E = models.G, models.encoder
    with torch.no_grad():
        w_s, _ = E(to_image(source[None]))
        _, s_d = E(to_image(driving))
        w = w_s.repeat(len(driving), 1, 1)
        if offsets is not None:
            w = w + offsets
        mods = [G.conv1, G.to_rgb1] + [m for k in range(len(G.to_rgbs))
                                       for m in (G.convs[2 * k], G.convs[2 * k + 1], G.to_rgbs[k])]
        styles = [mod.conv.modulation(w[:, layer.wplus_row]) for layer, mod in zip(G.ss_layers, mods)]
        for i, s in zip(models.layers, s_d):
            styles[i] = styles[i] + s
        return to_uint8(G.synthesis_ss(styles))


def test_streamed_frames_equal_one_batched_render_of_eq3():
    models = tiny_models()
    source, driving = random_frames(1, 1)[0], random_frames(11, 2)
    engine = Reenactor(models)
    chunks = list(engine.stream(engine.source(source), iter(driving), batch_size=4))  # a generator of frames
    assert [len(c) for c in chunks] == [4, 4, 3]
    streamed = np.concatenate(chunks)
    expected = eq3_by_hand(models, source, driving)
    assert streamed.dtype == np.uint8 and streamed.shape == (11, SIZE, SIZE, 3)
    assert np.abs(streamed.astype(int) - expected).max() <= 1  # float rounding of another batch size only
    assert np.abs(streamed.astype(int) - expected).mean() < 0.05
    # the driving frames matter (S_F of each frame), and so does the source
    other = np.concatenate(list(engine.stream(engine.source(random_frames(1, 9)[0]), driving, 4)))
    assert np.abs(other.astype(int) - streamed).mean() > 1


def test_eq4_edit_adds_the_ramped_direction_to_w_id():
    models = tiny_models()
    source, driving = random_frames(1, 1)[0], random_frames(5, 2)
    direction = torch.randn(models.G.n_latent, models.G.style_dim) * 0.5
    schedule = EditSchedule([(Direction("d", direction, "pca", "test"), -1.0, 3.0)], n_frames=5)
    engine = Reenactor(models)
    edited = np.concatenate(list(engine.stream(engine.source(source), driving, 2, edit=schedule)))
    strengths = torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0])  # A + (B - A) t / (T - 1)
    expected = eq3_by_hand(models, source, driving, strengths[:, None, None] * direction)
    assert np.abs(edited.astype(int) - expected).max() <= 1
    plain = np.concatenate(list(engine.stream(engine.source(source), driving, 2)))
    assert np.abs(plain.astype(int) - edited).mean() > 1


MEMORY_PROBE = textwrap.dedent("""
    import sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from tests.test_reenact import random_frames, tiny_models
    from pipeline.reenact import Reenactor
    T, materialise = int(sys.argv[1]), sys.argv[2] == "materialise"
    engine = Reenactor(tiny_models())
    source = engine.source(random_frames(1)[0])

    def video(n):  # decoded on the fly, as pipeline/video.py's reader yields frames
        rng = np.random.default_rng(0)
        for _ in range(n):
            yield rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)

    def rss():  # resident KiB now (not the process's peak, which imports and model set-up already raised)
        return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])

    for _ in range(2):  # warm-up: what any video needs (allocator caches included)
        for _ in engine.stream(source, video(256), 32):
            pass
    base = peak = rss()
    frames = list(video(T)) if materialise else video(T)
    kept, n = [], 0
    for chunk in engine.stream(source, frames, 32):
        n += len(chunk)
        if materialise:
            kept.append(chunk)
        peak = max(peak, rss())
    print("frames", n, "growth_mib", (peak - base) / 1024)
""")


def test_the_driving_video_is_read_one_batch_at_a_time():
    """What keeps memory flat, exactly: frames are pulled from the driving video only as each batch is rendered."""
    models = tiny_models()
    engine = Reenactor(models)
    source = engine.source(random_frames(1)[0])
    pulled = []

    def video(n):
        for frame in random_frames(n, 3):
            pulled.append(1)
            yield frame

    for k, chunk in enumerate(engine.stream(source, video(20), 4)):
        assert len(chunk) == 4 and len(pulled) <= 4 * (k + 1) + 1, (k, len(pulled))
    assert len(pulled) == 20


@pytest.mark.parametrize("materialise", [False, True])
def test_memory_is_flat_in_the_video_length(tmp_path, materialise):
    """6000 frames (17.6 MiB of uint8 in, 17.6 MiB out) stream through with the resident memory, sampled after every
    batch, never more than 22 MiB above its level after a warm-up (measured: 4-13 MiB of allocator noise, whatever
    the length); holding the video in memory (the control, 35 MiB) goes past that, so the check can fail. Not an
    address-space cap (glibc reserves 64 MB per thread arena: flaky) nor the peak RSS (set-up had raised it)."""
    script = tmp_path / "probe.py"
    script.write_text(MEMORY_PROBE)
    run = subprocess.run([sys.executable, str(script), "6000", "materialise" if materialise else "stream"], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    frames, growth = run.stdout.split()[1], float(run.stdout.split()[3])
    assert frames == "6000"
    assert (growth > 22) if materialise else (growth < 22), run.stdout


def test_frames_of_another_size_are_refused_with_the_fix():
    engine = Reenactor(tiny_models())
    with pytest.raises(ReenactError, match=r"crop them first.*--size 32"):
        engine.source(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ReenactError, match="no frames"):
        list(engine.stream(engine.source(random_frames(1)[0]), iter([]), 4))


def test_load_models_checks_the_pair_of_checkpoints(tmp_path):
    g, e = save_tiny_checkpoints(tmp_path / "ok")
    models = load_models(g, e)
    assert models.size == SIZE and models.layers == motion_layers(models.G, "all", 6)
    assert set(models.inputs) == {"generator.pt", "encoder.pt"}
    frames = np.concatenate(list(Reenactor(models).stream(Reenactor(models).source(random_frames(1)[0]),
                                                          random_frames(3), 2)))
    assert frames.shape == (3, SIZE, SIZE, 3)
    # the encoder with a generator of another config than the one it was trained for
    save_native(Generator(SIZE, style_dim=16, n_mlp=3, channel_multiplier=1, channel_max=16), tmp_path / "g3.pt")
    with pytest.raises(CheckpointError, match=r"encoder.pt: this encoder was trained for another generator .*n_mlp.*"
                                              r"re-train the encoder"):
        load_models(tmp_path / "g3.pt", e)
    with pytest.raises(CheckpointError, match=r"nope.pt: no such checkpoint; train one with the `pretrain`"):
        load_models(g, tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match=r"missing.pt: no such file"):
        load_models(tmp_path / "missing.pt", e)


# ---------------------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The tiny world through finetune: what the reenact stage reads."""
    from pipeline.stage import load_stage

    root = tmp_path_factory.mktemp("world")
    params = validate_params(tiny_raw())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_ROOT", str(tmp_path_factory.getbasetemp() / "mlflow"))  # never the repo's store
        for name in ("data", "prepare", "analyzer", "generator", "pretrain", "finetune"):
            load_stage(name).execute(params=params, root=root, progress=False)
    return root


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path_factory.getbasetemp() / "mlflow"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_stage_writes_what_evaluate_reads(world, tmp_path):
    import shutil

    from pipeline.evaluation.robustness import select_diverse_frames
    from pipeline.evaluation.sources import find_pairs
    from pipeline.paths import EDIT_DIRECTIONS, GENERATOR_CHECKPOINT, METRICS, REENACTED
    from pipeline.stage import load_stage
    from pipeline.store import PreparedStore

    params = validate_params(tiny_raw())
    g_before = _sha(world / GENERATOR_CHECKPOINT)
    metrics = load_stage("reenact").execute(params=params, root=world, progress=False)
    out = world / REENACTED
    assert _sha(world / GENERATOR_CHECKPOINT) == g_before  # CMA and PTI adapt copies only
    index_bytes = (out / "index.csv").read_bytes()
    assert b"\r" not in index_bytes and str(world).encode() not in index_bytes
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    assert list(index.columns) == ["protocol", "adaptation", "name", "pred", "driving", "source", "target", "landmarks"]
    expected = {("same", a) for a in ("cma", "none")} | {("cross", a) for a in ("cma", "none", "pti")} | \
        {("robustness", "none")}
    assert set(zip(index.protocol, index.adaptation)) == expected
    store = PreparedStore(world / "data/prepared")
    rob = params.evaluate.robustness
    for row in index.to_dict("records"):
        pred = np.load(out / row["pred"])
        driving = np.load(out / row["driving"])
        assert pred.dtype == np.uint8 and pred.shape == driving.shape and pred.shape[1:] == (32, 32, 3)
        assert len(pred) <= TINY["reenact.max_frames"]
        assert (out / row["pred"].replace(".npy", ".mp4")).is_file()
        assert np.load(out / row["landmarks"]).shape == (len(pred), 68, 2)
        assert (out / row["source"]).is_file()
        if row["protocol"] == "cross":
            assert np.load(out / row["target"]).shape == pred.shape
        else:
            assert row["target"] == ""
    for protocol, group in index.groupby("protocol"):
        for adaptation in group.adaptation.unique():
            folder = out / protocol
            preds = tmp_path / protocol / adaptation  # the .npy predictions alone (their .mp4 twins share the stem)
            preds.mkdir(parents=True)
            for p in (folder / adaptation).glob("*.npy"):
                (preds / p.name).symlink_to(p)
            pairs, problems = find_pairs(preds, folder / "driving", folder / "source",
                                         folder / "target" if protocol == "cross" else None, folder / "landmarks",
                                         protocol)
            assert problems == {} and len(pairs) == (group.adaptation == adaptation).sum()
    # same identity: the first frame of the video is the source; cross: a frame of X's own clip, target = the render
    same = index[(index.protocol == "same") & (index.adaptation == "none")].iloc[0]
    from PIL import Image

    assert np.array_equal(np.array(Image.open(out / same["source"])), np.load(out / same["driving"])[0])
    cross = index[(index.protocol == "cross") & (index.adaptation == "none")].iloc[0]
    row = store.manifest().set_index("clip_id").loc[cross["name"]]
    assert row["kind"] == "cross"
    assert np.array_equal(np.load(out / cross["target"]), np.asarray(store.frames(cross["name"]))[:len(np.load(out / cross["target"]))])
    src = np.array(Image.open(out / cross["source"]))
    own = store.clips("test", "clip")
    own = own[own.identity == row["identity"]]["clip_id"]
    assert any((np.asarray(store.frames(c)) == src).all(axis=(1, 2, 3)).any() for c in own)
    # robustness: n_driving videos (all 4 held-out clips of the tiny world) x n_sources diverse frames each
    robust = index[index.protocol == "robustness"]
    for driving, group in robust.groupby(robust["name"].str.rsplit("__", n=1).str[0]):
        truth = store.truth(driving)
        n = len(np.load(out / group.iloc[0]["driving"]))
        feats = np.concatenate([truth[k][:n] for k in rob.features], axis=1)
        chosen = select_diverse_frames(feats, min(rob.n_sources, n), rob.selection, seed=params.seed)
        assert sorted(group["name"]) == sorted(f"{driving}__f{i:04d}" for i in chosen)
    # metrics: counts, steps and final losses of every adapted video; no timings (MLflow only)
    assert metrics["videos"]["cross"] == {"cma": 2, "none": 2, "pti": 2}
    assert all(v["steps"] == TINY["reenact.cma.steps"] and v["final"]["loss"] > 0
               for v in metrics["adapted"]["cma"].values())
    text = (world / METRICS / "reenact.json").read_text()
    assert "seconds" not in text and str(world) not in text
    names = [e["name"] for e in metrics["edits"]]
    assert names[:3] == ["pc0", "pc1", "pc2"] and "face_width" in names and "hair_style" not in names
    assert (world / EDIT_DIRECTIONS).is_file() and (world / "reports/reenact/samples.png").is_file()
    # byte-identical on a re-run (same machine and thread count)
    first = _tree(out)
    shutil.rmtree(out)
    load_stage("reenact").execute(params=params, root=world, progress=False)
    assert _tree(out) == first


def test_stage_skips_a_protocol_with_no_adaptation(world):
    from pipeline.paths import REENACTED
    from pipeline.stage import load_stage

    params = validate_params(tiny_raw(**{"reenact.adaptations.same": [], "reenact.adaptations.cross": ["none"],
                                     "reenact.adaptations.robustness": []}))
    metrics = load_stage("reenact").execute(params=params, root=world, progress=False)
    assert metrics["videos"] == {"cross": {"none": 2}}
    index = pd.read_csv(world / REENACTED / "index.csv", keep_default_na=False)
    assert set(index.protocol) == {"cross"} and not (world / REENACTED / "same").exists()
