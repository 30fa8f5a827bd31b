"""The `reenact` command: help everywhere, user errors as messages with exit status 2, assets, crop."""
import json

import numpy as np
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.video import write_video

runner = CliRunner()


def test_help_for_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "prepare", "assets", "params", "crop"):
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_params_error_is_a_message_not_a_traceback(tmp_path, real_params):
    real_params["prepare"]["sise"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(real_params))
    result = runner.invoke(app, ["params", "--path", str(path)])
    assert result.exit_code == 2
    assert "did you mean 'prepare.size'" in result.output and "Traceback" not in result.output


def test_params_prints_resolved_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 3\n")
    result = runner.invoke(app, ["params", "--path", str(path)])
    assert result.exit_code == 0
    assert yaml.safe_load(result.output)["prepare"]["size"] == 64


def test_assets_table_lists_status_and_source(tmp_path, real_params):
    real_params["assets"]["lab_weights"] = {"path": str(tmp_path / "absent.pt"), "sha256": "0" * 64,
                                            "source": "ask the lab", "used_by": ["generator"]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(real_params))
    result = runner.invoke(app, ["assets", "--path", str(path)], terminal_width=200)
    assert result.exit_code == 0
    assert "dlib_landmarks68" in result.output and "present" in result.output
    assert "lab_weights" in result.output and "missing" in result.output and "ask the lab" in result.output


def test_dry_run_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("data:\n  n_identities: 3\n")
    result = runner.invoke(app, ["data", "--dry-run"])
    assert result.exit_code == 0 and "n_identities: 3" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]


def test_crop_reports_inputs_without_faces_and_bad_paths(tmp_path):
    frames = np.full((30, 64, 64, 3), (30, 120, 60), np.uint8)
    write_video(tmp_path / "in" / "plain.mp4", frames, fps=25)
    result = runner.invoke(app, ["crop", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--size", "64"])
    assert result.exit_code == 0, result.output
    crops = json.loads((tmp_path / "out" / "crops.json").read_text())
    (entry,) = crops.values()
    assert entry["tracks"] == [] and "no face" in entry["reason"]
    missing = runner.invoke(app, ["crop", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")])
    assert missing.exit_code == 2 and "nowhere" in missing.output


def test_stage_command_reports_a_bad_params_key_without_traceback(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("data:\n  n_identitis: 3\n")
    done = subprocess.run([sys.executable, "-m", "stages.data"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 2
    assert "data.n_identitis: unknown key; did you mean 'data.n_identities'" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]


def test_generator_render_wplus_and_sspace_agree(tmp_path):
    import torch

    from pipeline.models.stylegan2 import Generator
    from pipeline.models.stylegan2_formats import save_native

    torch.manual_seed(0)
    G = Generator(resolution=8, style_dim=8, n_mlp=1, channel_max=8)
    save_native(G, tmp_path / "g.pt")
    wplus = np.random.default_rng(0).standard_normal((2, G.n_latent, 8)).astype(np.float32)
    np.save(tmp_path / "w.npy", wplus)
    with torch.no_grad():
        styles = G.A(torch.from_numpy(wplus))
    np.savez(tmp_path / "s.npz", **{f"s_{i}": s.numpy() for i, s in enumerate(styles)})
    common = ["generator", "render", "--checkpoint", str(tmp_path / "g.pt"), "--format", "native"]
    r1 = runner.invoke(app, [*common, "--wplus", str(tmp_path / "w.npy"), "--out", str(tmp_path / "a.npy")])
    r2 = runner.invoke(app, [*common, "--sspace", str(tmp_path / "s.npz"), "--out", str(tmp_path / "b.npy")])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (2, 3, 8, 8) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    bad = runner.invoke(app, [*common, "--wplus", str(tmp_path / "s.npz"), "--out", str(tmp_path / "c.npy")])
    assert bad.exit_code == 2 and not (tmp_path / "c.npy").exists()
    truncated = tmp_path / "t.pt"
    truncated.write_bytes((tmp_path / "g.pt").read_bytes()[:200])
    r3 = runner.invoke(app, ["generator", "render", "--checkpoint", str(truncated), "--format", "native",
                             "--wplus", str(tmp_path / "w.npy"), "--out", str(tmp_path / "d.npy")])
    assert r3.exit_code == 2 and "t.pt" in r3.output and "Traceback" not in r3.output


def test_generator_layers_marks_the_motion_layers():
    result = runner.invoke(app, ["generator", "layers", "--resolution", "1024"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "26 layers, 9088 channels" in result.output
    rows = [line for line in result.output.splitlines() if "yes" in line]
    assert len(rows) == 10  # params: model.sf_layers.count
