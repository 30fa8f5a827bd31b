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
    assert result.exit_code == 0 and "'n_identities': 3" in result.output
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
