"""The stage runner on the tiny world, stage by stage, called directly (no DVC, no chdir): the training paths,
the outputs every stage writes, and byte-identical outputs from two workspaces in different folders."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import validate_params
from pipeline.paths import ANALYZER_CHECKPOINT, GENERATOR_CHECKPOINT, METRICS, PREPARED, RAW
from pipeline.stage import ParamsView, Stage, StageResult, UndeclaredParams, load_stage

ORDER = ("data", "prepare", "analyzer", "generator")  # dvc.yaml's order: the generator is scored through the analyzer


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    """The tiny world run through every stage in two workspaces (different folders, different path lengths)."""
    import yaml

    from tests.conftest import REPO, TINY
    from pipeline.config import set_dotted

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in TINY.items():
        set_dotted(raw, key, value)
    params = validate_params(raw)
    roots = [tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("second_workspace") / "deeper"]
    metrics = {}
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
        metrics[root] = {name: load_stage(name).execute(params=params, root=root, progress=False) for name in ORDER}
    return roots, metrics


def test_every_stage_writes_its_outputs_with_one_global_step(workspaces):
    roots, metrics = workspaces
    root = roots[0]
    for name in ORDER:
        assert json.loads((root / METRICS / f"{name}.json").read_text()) == json.loads(json.dumps(metrics[root][name]))
    for name in ("generator", "analyzer"):
        steps = pd.read_csv(root / METRICS / f"{name}_history.csv")["step"]
        assert steps.is_monotonic_increasing and steps.is_unique, name
    history = pd.read_csv(root / METRICS / "generator_history.csv")
    assert set(history["phase"]) == {"warmup", "mapping"}  # both phases on one axis
    assert (root / GENERATOR_CHECKPOINT).is_file() and (root / ANALYZER_CHECKPOINT).is_file()
    assert (root / "mlflow.db").is_file()  # the MLflow store of the workspace (no DVC_ROOT here)


def test_two_workspaces_write_byte_identical_data(workspaces):
    roots, _ = workspaces
    for folder in (RAW, PREPARED):
        a, b = _digest(roots[0] / folder), _digest(roots[1] / folder)
        assert a and a == b, folder
    text = "".join((roots[0] / PREPARED / name).read_text() for name in ("manifest.csv", "videos.csv"))
    assert str(roots[0]) not in text and "/tmp" not in text  # no absolute paths in the store


def test_trained_networks_and_metrics_are_byte_identical_on_one_machine(workspaces):
    """Same machine, same thread count: training is deterministic, so equal inputs give equal checkpoints.
    (Across CPU types the last bits of float reductions may differ: see the README.)"""
    roots, _ = workspaces
    for path in (GENERATOR_CHECKPOINT, ANALYZER_CHECKPOINT, *(METRICS / f"{n}.json" for n in ORDER),
                 METRICS / "generator_history.csv", METRICS / "analyzer_history.csv"):
        assert (roots[0] / path).read_bytes() == (roots[1] / path).read_bytes(), path


def test_no_timings_in_dvc_outputs(workspaces):
    roots, _ = workspaces
    for name in ORDER:
        text = (roots[0] / METRICS / f"{name}.json").read_text()
        assert "seconds" not in text and "per_second" not in text, name


def test_a_stage_reading_an_undeclared_section_fails_naming_the_fix(tmp_path, tiny_params):
    params = validate_params(tiny_params)

    def reads_too_much(ctx):
        return StageResult({"n": ctx.params.prepare.size})  # declares only `data`

    with pytest.raises(UndeclaredParams, match=r"section 'prepare'.*dvc.yaml"):
        Stage("data", reads_too_much, sections=("seed", "data")).execute(params=params, root=tmp_path, progress=False)
    assert ParamsView(params, ("seed",), "x").seed == params.seed


def test_dry_run_prints_the_resolved_sections_and_writes_nothing(tmp_path, tiny_params, capsys):
    logged = load_stage("prepare").execute(params=validate_params(tiny_params), root=tmp_path, dry_run=True)
    assert set(logged) == {"seed", "split", "prepare", "assets"} and set(logged["assets"]) == {"dlib_landmarks68"}
    assert "mask_dilation" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_history_steps_must_increase(tmp_path, tiny_params):
    def folds(ctx):
        return StageResult({"ok": 1}, history=[{"step": 1, "a": 0.5}, {"step": 1, "b": 0.2}])

    with pytest.raises(ValueError, match="strictly increase"):
        Stage("data", folds, sections=("data",)).execute(params=validate_params(tiny_params), root=tmp_path,
                                                         progress=False)
    assert not (tmp_path / METRICS / "data_history.csv").exists()


def test_stage_module_runs_as_dvc_runs_it(tmp_path, tiny_params):
    """`python -m stages.data --dry-run` in a workspace: exit 0; a bad key: one line, exit 2."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    ok = subprocess.run([sys.executable, "-m", "stages.data", "--dry-run"], cwd=tmp_path, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "n_identities: 5" in ok.stdout
    tiny_params["data"]["n_identites"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    bad = subprocess.run([sys.executable, "-m", "stages.data"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'data.n_identities'" in bad.stderr and "Traceback" not in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]


def test_pretrained_networks_must_not_have_seen_the_held_out_faces(workspaces):
    """The analyzer trains on a world of its own, the generator on the training identities: both are checked
    against the evaluation world's identities, by the renderer's identity vectors."""
    from pipeline.analysis import BackendError
    from pipeline.analysis.toy import ToyAnalyzer, check_disjoint
    from pipeline.generator import GeneratorWorldError, check_world
    from pipeline.models.stylegan2_formats import load_generator
    from pipeline.store import PreparedStore, identity_fingerprints

    root = workspaces[0][0]
    store = PreparedStore(root / PREPARED)
    world, held_out = identity_fingerprints(store), identity_fingerprints(store, "test")
    analyzer = ToyAnalyzer.load(root / ANALYZER_CHECKPOINT, root=root)
    assert analyzer.facts["world"]["seed"] == 1001 and analyzer.facts["identity_fingerprints"]
    check_disjoint(analyzer, world, "analyzer.pt")  # its own world: no face in common
    analyzer.facts["identity_fingerprints"] = [next(iter(world.values()))]
    with pytest.raises(BackendError, match="trained on 1 identities of this world.*analyzer.source=train"):
        check_disjoint(analyzer, world, "analyzer.pt")
    extra = load_generator(root / GENERATOR_CHECKPOINT, "native").checkpoint_info["extra"]
    seen = set(extra["world"]["identity_fingerprints"])
    assert seen and not seen & set(held_out.values())  # trained on the training identities only
    check_world(extra, store, "generator.pt")
    extra["world"]["identity_fingerprints"].append(next(iter(held_out.values())))
    with pytest.raises(GeneratorWorldError, match="holds out for evaluation.*generator.source=train"):
        check_world(extra, store, "generator.pt")
