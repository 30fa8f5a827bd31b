"""The evaluation engine and `reenact evaluate`: pairing, streaming, every protocol, reference rows, missing
networks, bad inputs, sharding, memory; end to end on the real media in ../shared/media (skipped without it)."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.ndimage import gaussian_filter

from pipeline.config import validate_params
from pipeline.evaluation import EvaluationError, evaluate_videos
from pipeline.evaluation import engine
from pipeline.evaluation.registry import METRICS
from pipeline.metrics.image import l1_per_image, ssim_per_image
from pipeline.video import write_video

from test_evaluation_networks import make_alexnet_file, make_i3d_file, make_toy_workspace  # noqa: E402

QUIET = {"progress": False, "resamples": 200, "set_resamples": 20}


def _video(seed: int, n: int = 20, size: int = 32) -> np.ndarray:
    """A moving blob on a smooth background: frames vary in time, as a talking head does."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    bg = gaussian_filter(rng.uniform(0, 255, (size, size, 3)), (4, 4, 0))
    frames = []
    for t in range(n):
        cx, cy = size / 2 + size / 4 * np.sin(t / 3 + seed), size / 2 + size / 5 * np.cos(t / 4)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (size / 8) ** 2))[..., None]
        frames.append(bg * (1 - blob) + blob * np.array([230, 180, 150]))
    return np.clip(frames, 0, 255).astype(np.uint8)


def _noisy(frames: np.ndarray, amount: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames.astype(float) + rng.normal(0, amount, frames.shape), 0, 255).astype(np.uint8)


def _landmarks(n: int, size: int) -> np.ndarray:
    lm = np.full((n, 68, 2), size / 2.0)
    lm[:, 48:68, 0] += np.linspace(-size / 8, size / 8, 20)
    lm[:, 48:68, 1] += size / 5 + np.linspace(0, 2, n)[:, None]
    return lm


@pytest.fixture
def toy_ws(tmp_path, monkeypatch):
    import shutil

    from conftest import REPO

    ws = make_toy_workspace(tmp_path / "ws")
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    monkeypatch.chdir(ws)
    return ws


@pytest.fixture
def folders(tmp_path):
    """3 same-identity pairs as .npy frame arrays, predictions = driving + noise, with landmarks."""
    pred, drv, lms = tmp_path / "pred", tmp_path / "drv", tmp_path / "lm"
    for d in (pred, drv, lms):
        d.mkdir()
    for i, name in enumerate(["v0", "v1", "v2"]):
        frames = _video(i)
        np.save(drv / f"{name}.npy", frames)
        np.save(pred / f"{name}.npy", _noisy(frames, 10 + 5 * i, seed=i))
        np.save(lms / f"{name}.npy", _landmarks(len(frames), 32))
    return pred, drv, lms


TOY_SAME = ["l1", "psnr", "ssim", "lpips_toy", "l_id", "fid_toy", "fvd_toy", "fvd_m_toy", "rho_au", "rho_gz", "rho_pose"]


def test_same_protocol_every_toy_metric_and_reference_rows(toy_ws, folders):
    pred, drv, lms = folders
    r = evaluate_videos(pred, drv, landmarks=lms, metrics=TOY_SAME, identity_backend="toy", motion_backend="toy",
                        clip_frames=8, **QUIET)
    assert set(r) >= {"aggregate", "per_video", "networks", "missing", "references", "resolution", "settings"}
    assert r["missing"] == {} and list(r["aggregate"]) == TOY_SAME and set(r["per_video"]) == {"v0", "v1", "v2"}
    # per-video values are the frame means of the library's per-image metrics
    p, d = np.load(pred / "v1.npy"), np.load(drv / "v1.npy")
    assert r["per_video"]["v1"]["l1"] == pytest.approx(l1_per_image(d, p).mean())
    assert r["per_video"]["v1"]["ssim"] == pytest.approx(ssim_per_image(d, p).mean())
    agg = r["aggregate"]["l1"]
    values = [r["per_video"][k]["l1"] for k in ("v0", "v1", "v2")]
    assert agg["mean"] == pytest.approx(np.mean(values)) and agg["std"] == pytest.approx(np.std(values, ddof=1))
    assert agg["n"] == 3 and agg["ci95"][0] <= agg["mean"] <= agg["ci95"][1]
    # set metrics: pooled over videos, 20 frames x 3 videos; 2 clips of 8 frames per video
    assert r["aggregate"]["fid_toy"]["features"] == [60, 60] and "fid_toy" not in r["per_video"]["v0"]
    assert r["aggregate"]["fvd_toy"]["features"] == [6, 6] and r["aggregate"]["fvd_m_toy"]["features"] == [6, 6]
    assert r["aggregate"]["fid_toy"]["mean"] > 0 and None not in r["aggregate"]["fid_toy"]["ci95"]
    # networks: every number names the network that made it
    assert r["networks"]["l_id"]["backend"] == "toy" and "toy" in r["networks"]["fid_toy"]["backend"]
    assert "renderer" in r["networks"]["rho_pose"]["note"] and r["networks"]["l1"]["backend"] == "pixels"
    # the ceiling: copy the driving frame
    ceil = r["references"]["copy_driving"]["aggregate"]
    assert ceil["l1"]["mean"] == 0 and ceil["ssim"]["mean"] == pytest.approx(1) and ceil["psnr"]["mean"] == 60.0
    assert ceil["lpips_toy"]["mean"] == pytest.approx(0, abs=1e-6) and ceil["rho_pose"]["mean"] == pytest.approx(1)
    assert abs(ceil["fid_toy"]["mean"]) < 1e-6
    # the floor: copy the source (default: the first driving frame): a frozen output transfers no motion
    floor = r["references"]["copy_source"]["aggregate"]
    assert floor["rho_pose"]["mean"] == 0 and floor["rho_au"]["mean"] == 0
    assert floor["l_id"]["mean"] == pytest.approx(0, abs=1e-6)  # it IS the source frame
    assert 0 < r["aggregate"]["rho_pose"]["mean"] < 1  # a random toy net: noise moves its readings
    assert r["videos"]["v0"]["source"] == "first driving frame"


def test_driving_resized_to_the_predictions_resolution(tmp_path):
    pred, drv = tmp_path / "pred", tmp_path / "drv"
    pred.mkdir(), drv.mkdir()
    big = _video(3, n=6, size=64)
    small = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.BILINEAR)) for f in big])
    np.save(drv / "a.npy", big)
    np.save(pred / "a.npy", small)
    r = evaluate_videos(pred, drv, metrics=["l1", "psnr"], params=validate_params({}), **QUIET)
    assert r["per_video"]["a"]["l1"] == 0 and r["resolution"]["sizes"] == [[32, 32]]
    assert "predictions' resolution" in r["resolution"]["note"]


def test_mismatched_frame_counts_name_both_files_or_skip(tmp_path):
    pred, drv = tmp_path / "pred", tmp_path / "drv"
    pred.mkdir(), drv.mkdir()
    for name, n_pred in (("ok", 8), ("short", 6)):
        frames = _video(1, n=8)
        np.save(drv / f"{name}.npy", frames)
        np.save(pred / f"{name}.npy", frames[:n_pred])
    params = validate_params({})
    with pytest.raises(EvaluationError, match=r"short: frame counts differ.*short\.npy: 6 frame.*short\.npy: 8 frame"):
        evaluate_videos(pred, drv, metrics=["l1"], params=params, **QUIET)
    r = evaluate_videos(pred, drv, metrics=["l1"], params=params, skip_bad=True, **QUIET)
    assert set(r["per_video"]) == {"ok"} and "frame counts differ" in r["skipped"]["short"]
    # a limit that both reach is not a mismatch (the paper's first 500 frames)
    assert set(evaluate_videos(pred, drv, metrics=["l1"], params=params, max_frames=5, **QUIET)["per_video"]) == {"ok", "short"}


def test_missing_pairs_and_unreadable_videos(tmp_path):
    pred, drv = tmp_path / "pred", tmp_path / "drv"
    pred.mkdir(), drv.mkdir()
    np.save(drv / "a.npy", _video(0, n=4))
    np.save(pred / "a.npy", _video(0, n=4))
    np.save(pred / "orphan.npy", _video(0, n=4))
    np.save(drv / "unscored.npy", _video(0, n=4))
    params = validate_params({})
    with pytest.raises(EvaluationError, match=r"orphan\.npy: no driving video named 'orphan'.*1 more.*--skip-bad"):
        evaluate_videos(pred, drv, metrics=["l1"], params=params, **QUIET)
    r = evaluate_videos(pred, drv, metrics=["l1"], params=params, skip_bad=True, **QUIET)
    assert set(r["per_video"]) == {"a"}
    assert any("no prediction for driving video 'unscored'" in v for v in r["skipped"].values())
    (pred / "orphan.npy").unlink()
    (drv / "unscored.npy").unlink()
    (pred / "bad.mp4").write_bytes(b"not a video")
    np.save(drv / "bad.npy", _video(0, n=4))
    with pytest.raises(EvaluationError, match=r"bad\.mp4"):
        evaluate_videos(pred, drv, metrics=["l1"], params=params, **QUIET)
    assert "bad" in evaluate_videos(pred, drv, metrics=["l1"], params=params, skip_bad=True, **QUIET)["skipped"]


def test_missing_network_is_reported_with_the_file_never_replaced(tmp_path, folders, real_params):
    pred, drv, _ = folders
    real_params["assets"]["fid_inception"]["path"] = str(tmp_path / "nowhere" / "pt_inception-2015-12-05-6726825d.pth")
    wrong = tmp_path / "alexnet-owt-7be5be79.pth"  # the real name on a different file
    wrong.write_bytes(b"0" * 100)
    real_params["assets"]["lpips_alexnet"]["path"] = str(wrong)
    r = evaluate_videos(pred, drv, metrics=["l1", "lpips", "fid", "l_id"], params=validate_params(real_params),
                        identity_backend="arcface", **QUIET)
    assert list(r["aggregate"]) == ["l1"] and set(r["networks"]) == {"l1"}
    assert "pt_inception-2015-12-05-6726825d.pth" in r["missing"]["fid"] and "is missing" in r["missing"]["fid"]
    assert "does not start with 7be5be79" in r["missing"]["lpips"]
    assert "model_ir_se50.pth" in r["missing"]["l_id"]
    assert "lpips" not in r["per_video"]["v0"] and "lpips" not in r["references"]["copy_source"]["aggregate"]


def test_robustness_protocol_per_combination_set_metrics_and_clusters(toy_ws, tmp_path):
    pred, drv, src = tmp_path / "pred", tmp_path / "drv", tmp_path / "src"
    for d in (pred, drv, src):
        d.mkdir()
    for i, dname in enumerate(["d0", "d1"]):
        frames = _video(10 + i, n=16)
        np.save(drv / f"{dname}.npy", frames)
        for k in (0, 5, 9):
            np.save(pred / f"{dname}__f{k}.npy", _noisy(frames, 8 + k, seed=k))
            Image.fromarray(frames[k]).save(src / f"{dname}__f{k}.png")
    r = evaluate_videos(pred, drv, source=src, protocol="robustness", metrics=["l1", "l_id", "fid_toy", "fvd_toy"],
                        identity_backend="toy", clip_frames=4, **QUIET)
    assert len(r["per_video"]) == 6 and r["videos"]["d1__f5"]["group"] == "d1"
    # Table 3: each combination has its own FID / FVD; mean and std over the combinations
    fids = [v["fid_toy"] for v in r["per_video"].values()]
    assert all(np.isfinite(fids)) and r["aggregate"]["fid_toy"]["mean"] == pytest.approx(np.mean(fids))
    assert r["aggregate"]["fid_toy"]["std"] == pytest.approx(np.std(fids, ddof=1))
    assert "clustered by driving video" in r["settings"]["aggregation"]
    assert r["videos"]["d0__f9"]["source"].endswith("d0__f9.png")
    with pytest.raises(EvaluationError, match="needs --source"):
        evaluate_videos(pred, drv, protocol="robustness", metrics=["l1"], **QUIET)


def test_cross_protocol_against_ground_truth_renders(toy_ws, tmp_path):
    pred, drv, src, tgt = (tmp_path / n for n in ("pred", "drv", "src", "tgt"))
    for d in (pred, drv, src, tgt):
        d.mkdir()
    for i in range(2):
        motion, other = _video(20 + i, n=8), _video(30 + i, n=8)
        np.save(drv / f"c{i}.npy", motion)
        np.save(tgt / f"c{i}.npy", other)  # "identity B with A's motion"
        np.save(pred / f"c{i}.npy", _noisy(other, 3, seed=i))
        np.save(src / f"c{i}.npy", other[:1])
    metrics = ["l1_gt", "psnr_gt", "ssim_gt", "l_id_gt", "l_id", "rho_pose"]
    r = evaluate_videos(pred, drv, source=src, target=tgt, protocol="cross", metrics=metrics, identity_backend="toy",
                        motion_backend="toy", **QUIET)
    # no copy-driving ceiling across identities: the ground truth is the ceiling there
    assert r["missing"] == {} and set(r["references"]) == {"copy_source", "ground_truth"}
    assert 0 < r["aggregate"]["l1_gt"]["mean"] < r["references"]["copy_source"]["aggregate"]["l1_gt"]["mean"]
    perfect = r["references"]["ground_truth"]["aggregate"]
    assert perfect["l1_gt"]["mean"] == 0 and perfect["ssim_gt"]["mean"] == pytest.approx(1)
    assert perfect["l_id_gt"]["mean"] == pytest.approx(0, abs=1e-6)
    r2 = evaluate_videos(pred, drv, source=src, protocol="cross", metrics=["l1_gt", "rho_pose"], motion_backend="toy", **QUIET)
    assert "--target" in r2["missing"]["l1_gt"]
    with pytest.raises(ValueError, match="not meaningful in the 'cross'"):
        evaluate_videos(pred, drv, source=src, protocol="cross", metrics=["l1"], **QUIET)


def test_identity_leakage_to_the_driver_by_hand(toy_ws, tmp_path):
    """l_id_driver = mean over frames of 1 - cos(phi(generated frame t), phi(driving frame t)), phi the identity
    backend; its copy-source reference is the two identities' own distance, its ground-truth reference the
    value without leakage at the driver's motion."""
    import torch

    from pipeline.analysis import load_analyzer

    pred, drv, src, tgt = (tmp_path / n for n in ("pred", "drv", "src", "tgt"))
    for d in (pred, drv, src, tgt):
        d.mkdir()
    other = _video(40, n=8)
    np.save(drv / "c0.npy", _video(41, n=8))
    np.save(pred / "c0.npy", _noisy(other, 20, seed=1))
    np.save(src / "c0.npy", other[:1])
    np.save(tgt / "c0.npy", _noisy(other, 5, seed=2))
    r = evaluate_videos(pred, drv, source=src, target=tgt, protocol="cross", metrics=["l_id_driver", "l_id"],
                        identity_backend="toy", **QUIET)
    net = load_analyzer("toy", validate_params(yaml.safe_load((toy_ws / "params.yaml").read_text())), root=toy_ws)
    with torch.no_grad():
        e_pred, e_drv, e_src, e_tgt = (net.identity(np.load(f / "c0.npy")).double().numpy()
                                       for f in (pred, drv, src, tgt))

    def dist(a, b):
        return 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    assert r["per_video"]["c0"]["l_id_driver"] == pytest.approx(dist(e_pred, e_drv).mean(), rel=1e-5)
    assert r["references"]["copy_source"]["per_video"]["c0"]["l_id_driver"] == pytest.approx(
        dist(e_src, e_drv).mean(), rel=1e-5)
    assert r["references"]["ground_truth"]["per_video"]["c0"]["l_id_driver"] == pytest.approx(
        dist(e_tgt, e_drv).mean(), rel=1e-5)  # the no-leakage value at the driver's pose and expression
    assert r["networks"]["l_id_driver"]["backend"] == "toy"
    assert METRICS["l_id_driver"].higher_is_better and METRICS["l_id_driver"].protocols == ("cross",)


def test_a_driving_frame_without_a_face_is_named_as_the_driving_reference(toy_ws, tmp_path, monkeypatch):
    pred, drv, src = (tmp_path / n for n in ("pred", "drv", "src"))
    for d in (pred, drv, src):
        d.mkdir()
    driving = _video(41, n=8)
    np.save(drv / "c0.npy", driving)
    np.save(pred / "c0.npy", _video(40, n=8))
    np.save(src / "c0.npy", _video(40, n=1))
    real = engine._embed

    def no_face_in_driving(net, frames):  # the identity backend finds no face in the driving frames
        out = real(net, frames)
        return np.full_like(out, np.nan) if np.array_equal(frames, driving) else out

    monkeypatch.setattr(engine, "_embed", no_face_in_driving)
    r = evaluate_videos(pred, drv, source=src, protocol="cross", metrics=["l_id_driver", "l_id"],
                        identity_backend="toy", **QUIET)
    assert r["videos"]["c0"]["info"]["frames_without_face"] == {"driving": "no face in the reference"}
    assert r["per_video"]["c0"]["l_id_driver"] is None and r["per_video"]["c0"]["l_id"] is not None


def test_paired_test_between_two_methods(folders, tmp_path):
    pred, drv, _ = folders
    worse = tmp_path / "worse"
    worse.mkdir()
    for f in pred.iterdir():
        np.save(worse / f.name, _noisy(np.load(f), 30, seed=9))
    params = validate_params({})
    other = evaluate_videos(worse, drv, metrics=["l1", "ssim"], params=params, **QUIET)
    r = evaluate_videos(pred, drv, metrics=["l1", "ssim"], params=params, paired_with=other, **QUIET)
    assert r["paired"]["l1"]["n"] == 3 and r["paired"]["l1"]["mean_difference"] < 0
    assert r["paired"]["ssim"]["mean_difference"] > 0 and r["paired"]["l1"]["p_value"] == pytest.approx(0.25)


def test_sharded_evaluation_equals_one_process(toy_ws, folders, monkeypatch):
    """Two ranks (simulated: rank 1's shard computed first, then handed to rank 0 through a stand-in
    all_gather_object) give exactly the single-process result."""
    import torch

    from pipeline.evaluation.api import settings_from_params
    from pipeline.evaluation.sources import find_pairs

    pred, drv, lms = folders
    params = validate_params({})
    kwargs = dict(metrics=("l1", "ssim", "fid_toy", "rho_pose"), motion_backend="toy", **QUIET)
    single = evaluate_videos(pred, drv, landmarks=lms, params=params, **kwargs)
    settings = settings_from_params(params, "same", **kwargs)
    pairs, _ = find_pairs(pred, drv, landmarks_dir=lms)
    nets = engine.Networks(params, settings, False)
    candidates = ["method", "copy_source", "copy_driving"]
    rank1 = engine._evaluate_shard(sorted(pairs, key=lambda p: p.name)[1::2], list(kwargs["metrics"]), candidates, nets,
                                   settings, False)

    def gather(out, obj):
        out[0], out[1] = obj, rank1

    monkeypatch.setattr(engine, "_dist_rank_world", lambda: (0, 2))
    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    sharded = evaluate_videos(pred, drv, landmarks=lms, params=params, **kwargs)
    for key in ("aggregate", "per_video", "references"):
        assert sharded[key] == single[key]


def test_long_video_streams_under_a_memory_cap(tmp_path):
    """A 600-frame video (7 MB decoded) evaluated with numpy memory peaking at a fraction of its frames:
    chunks are streamed, nothing per frame is kept but the metric values (the peak is the SSIM's float64
    temporaries of one chunk, whatever the video's length)."""
    pred, drv = tmp_path / "pred", tmp_path / "drv"
    pred.mkdir(), drv.mkdir()
    n, size = 600, 64
    frames = np.tile(_video(4, n=40, size=size), (n // 40, 1, 1, 1))
    write_video(drv / "long.mp4", frames, fps=25)
    np.save(pred / "long.npy", _noisy(frames, 5, seed=1))  # memory-mapped when read
    video_bytes = frames.nbytes
    del frames
    tracemalloc.start()
    r = evaluate_videos(pred, drv, metrics=["l1", "psnr", "ssim"], params=validate_params({}), max_frames=0,
                        batch_size=2, references=False, **QUIET)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r["videos"]["long"]["frames"] == n and r["frames"] == n
    assert peak < video_bytes / 3, f"peak {peak / 1e6:.1f} MB for a {video_bytes / 1e6:.0f} MB video"


# -- the command ---------------------------------------------------------------------------------------------------


def _cli(args):
    from typer.testing import CliRunner

    from pipeline.cli import app

    return CliRunner().invoke(app, args)


def test_cli_errors_exit_2_with_the_file(tmp_path):
    (tmp_path / "pred").mkdir()
    res = _cli(["evaluate", "--pred", str(tmp_path / "pred"), "--driving", str(tmp_path / "none"),
                "--out", str(tmp_path / "out.json"), "--no-progress"])
    assert res.exit_code == 2 and "none: driving folder not found" in " ".join(res.output.split())
    assert not (tmp_path / "out.json").exists()
    res = _cli(["evaluate", "--pred", str(tmp_path / "pred"), "--driving", str(tmp_path / "pred"), "--metrics", "l1,lpip",
                "--out", str(tmp_path / "out.json"), "--no-progress"])
    assert res.exit_code == 2 and "did you mean 'lpips'" in " ".join(res.output.split())


@pytest.mark.media
def test_reenact_evaluate_end_to_end_on_real_footage(media, tmp_path, real_params):
    """Two real talking heads (512 px) against blurred 128 px 'predictions' written as mp4: LPIPS and FVD on
    stand-in weights, dlib identity, head pose and landmarks (FVD_M) on the real faces."""
    pred, drv = tmp_path / "pred", tmp_path / "drv"
    pred.mkdir(), drv.mkdir()
    for name in ("lp_d0", "st_WDA_KatieHill_000"):
        (drv / f"{name}.mp4").symlink_to(media / "talking" / f"{name}.mp4")
        from pipeline.video import iter_frames

        out = []
        for i, (_, f) in enumerate(iter_frames(media / "talking" / f"{name}.mp4")):
            if i == 8:
                break
            small = Image.fromarray(f).resize((128, 128), Image.BILINEAR)
            out.append(gaussian_filter(np.asarray(small), (1, 1, 0)))
        write_video(pred / f"{name}.mp4", out, fps=25)
    real_params["assets"]["lpips_alexnet"]["path"] = str(make_alexnet_file(tmp_path / "assets"))
    real_params["assets"]["fvd_i3d"]["path"] = str(make_i3d_file(tmp_path / "assets"))
    real_params["evaluate"]["bootstrap"] = {"resamples": 200, "set_resamples": 10}
    real_params["evaluate"]["fvd"] = {"clip_frames": 8}  # one clip per video: dlib's descriptor takes 0.1 s a frame
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(real_params))
    out = tmp_path / "eval.json"
    res = _cli(["evaluate", "--pred", str(pred), "--driving", str(drv), "--out", str(out), "--params", str(params_file),
                "--metrics", "l1,psnr,ssim,lpips,l_id_dlib,fvd,fvd_m,rho_pose", "--motion-backend", "dlib",
                "--max-frames", "8", "--no-progress"])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["missing"] == {} and r["skipped"] == {} and r["frames"] == 16
    assert r["resolution"]["sizes"] == [[128, 128]]
    for name in ("lp_d0", "st_WDA_KatieHill_000"):
        v = r["per_video"][name]
        assert 0 < v["l1"] < 0.1 and v["psnr"] > 20 and 0.5 < v["ssim"] < 1 and v["lpips"] > 0
        assert 0 <= v["l_id_dlib"] < 0.1  # same person, blurred
        assert v["rho_pose"] is not None
    assert r["aggregate"]["fvd"]["features"] == [2, 2] and r["aggregate"]["fvd_m"]["features"] == [2, 2]
    assert r["networks"]["fvd_m"]["landmarks"].startswith("dlib")
    assert set(r["networks"]["lpips"]["weights_sha256"]) == {f.name for f in (tmp_path / "assets").glob("alexnet-owt-*")} | {"lpips/weights/v0.1/alex.pth"}
    assert r["references"]["copy_source"]["aggregate"]["l_id_dlib"]["mean"] == pytest.approx(0, abs=1e-9)
    assert "lpips" in res.output and "eval.json: 2 video(s), 16 frame(s)" in res.output


def test_exact_frames_beside_their_mp4_are_read_and_two_videos_of_one_name_are_refused(tmp_path):
    """The reenact stage writes <name>.npy (exact) and <name>.mp4 (to watch) side by side: the npy is scored."""
    from pipeline.evaluation.sources import find_pairs

    pred, drv = tmp_path / "pred", tmp_path / "drv"
    pred.mkdir(), drv.mkdir()
    np.save(drv / "a.npy", _video(0, n=4))
    np.save(pred / "a.npy", _video(0, n=4))
    write_video(pred / "a.mp4", _video(1, n=4), fps=25)
    pairs, problems = find_pairs(pred, drv)
    assert not problems and [p.pred.name for p in pairs] == ["a.npy"]
    (pred / "a.mov").write_bytes(b"another video of the same name")
    (pred / "a.npy").unlink()
    with pytest.raises(EvaluationError, match=r"two prediction files named 'a' \(a\.mov, a\.mp4\); keep one"):
        find_pairs(pred, drv)
