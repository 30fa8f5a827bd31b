"""The params profiles (profiles/<name>.yaml): each validates against the schema and turns into the `dvc exp run -S`
arguments that reproduce it."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline.config import load_params
from profiles import names, overrides, set_params_args
from tests.conftest import REPO


def test_the_documented_profiles_exist():
    assert {"toy-full", "paper"} <= set(names())


@pytest.mark.parametrize("name", names())
def test_a_profile_validates_and_its_set_params_args_round_trip(name):
    wanted = overrides(name)
    params = load_params(REPO / "params.yaml", wanted)  # ParamsError naming the key if the profile drifts
    args = set_params_args(name)
    assert args[::2] == ["-S"] * len(wanted)
    parsed = dict(a.split("=", 1) for a in args[1::2])
    assert {k: yaml.safe_load(v) for k, v in parsed.items()} == wanted
    for key, value in wanted.items():
        node = params
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        assert (node.as_posix() if hasattr(node, "as_posix") else node) == value, key


def test_the_paper_profile_is_the_papers_setting():
    p = load_params(REPO / "params.yaml", overrides("paper"))
    assert (p.pretrain.iters, p.finetune.iters) == (200_000, 20_000)
    assert p.pretrain.source == "train" and p.pretrain.world is None  # CelebV-HQ, not the synthetic pretraining world
    assert p.model.encoder.units == [3, 4, 14, 3] and p.model.encoder.init == "arcface"
    assert p.analysis.identity_loss == "arcface" and p.loss.lpips_net == "lpips" and p.prepare.size == 256


def test_the_command_line():
    out = subprocess.run([sys.executable, "-m", "profiles", "toy-full"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("-S ")
    bad = subprocess.run([sys.executable, "-m", "profiles", "nope"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "no profile 'nope'" in bad.stderr
