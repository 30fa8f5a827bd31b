import pytest
import yaml

from pipeline.config import STAGE_SECTIONS, ParamsError, Params, load_params, validate_params
from tests.conftest import REPO


def _error(raw: dict) -> str:
    with pytest.raises(ParamsError) as e:
        validate_params(raw)
    return str(e.value)


def test_real_params_file_validates():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.prepare.size % 2 == 0


def test_unknown_key_names_the_key_and_the_nearest(real_params):
    real_params["prepare"]["sise"] = 64
    message = _error(real_params)
    assert "prepare.sise: unknown key" in message
    assert "did you mean 'prepare.size'" in message


def test_unknown_top_level_and_asset_keys(real_params):
    real_params["sed"] = 1
    real_params["assets"]["dlib_landmarks68"]["sha"] = "x"
    message = _error(real_params)
    assert "'seed'" in message
    assert "assets.dlib_landmarks68.sha: unknown key; did you mean 'assets.dlib_landmarks68.sha256'" in message


def test_wrong_type_and_range_name_the_allowed_values(real_params):
    real_params["data"]["source"] = "youtube"
    real_params["split"]["test_fraction"] = 1.5
    real_params["data"]["n_identities"] = "many"
    message = _error(real_params)
    assert "data.source: 'youtube' is not allowed; allowed values: 'synthetic' or 'folder'" in message
    assert "split.test_fraction: 1.5 is out of range; must be < 1.0" in message
    assert "data.n_identities" in message and "valid integer" in message


def test_folder_source_needs_exactly_one_input(real_params):
    real_params["data"]["source"] = "folder"
    assert "set exactly one of data.folder.root or data.folder.manifest" in _error(real_params)
    real_params["data"]["folder"]["root"] = "/videos"
    assert validate_params(real_params).data.folder.root.as_posix() == "/videos"


def test_overrides_use_dotted_keys(tmp_path, real_params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(real_params))
    assert load_params(path, {"data.n_identities": 12}).data.n_identities == 12
    with pytest.raises(ParamsError, match="data.n_identities: 1 is out of range; must be >= 2"):
        load_params(path, {"data.n_identities": 1})


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_one_name_end_to_end():
    """Stage `x` in dvc.yaml = stages/x.py = params section `x`, and it reads its own section (which other
    sections each stage reads, and that dvc.yaml lists exactly those, is tests/test_house.py's check)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert name in STAGE_SECTIONS and name in Params.model_fields
        assert (REPO / "stages" / f"{name}.py").is_file()
        assert stage["cmd"] == f"python -m stages.{name}"
        assert name in {p.split(".")[0] for p in stage["params"]}, name
