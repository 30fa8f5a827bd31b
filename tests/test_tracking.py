import sqlite3

from pipeline.tracking import EXPERIMENT, flatten, stage_run


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_runs_land_in_the_dvc_root_store_with_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "brave-exp")
    monkeypatch.chdir(tmp_path)
    with stage_run("prepare", {"seed": 0, "prepare": {"size": 64, "detector": "auto"}}) as run:
        run.log_metrics({"clips": {"train": 3}, "note": "text is skipped", "flag": True})
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT])
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["tags.stage"] == "prepare" and row["tags.dvc_exp_name"] == "brave-exp"
    assert row["params.prepare.size"] == "64" and row["metrics.clips.train"] == 3
    assert "metrics.flag" not in runs.columns
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1


def test_a_failing_stage_marks_its_run_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    try:
        with stage_run("data", {"seed": 1}):
            raise RuntimeError("stage crashed")
    except RuntimeError:
        pass
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert list(mlflow.search_runs(experiment_names=[EXPERIMENT])["status"]) == ["FAILED"]
