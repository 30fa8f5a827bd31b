"""`reenact analyze`: JSONL per analysed frame, --compare, and user errors (exit 2, a message naming the input,
no output left behind).

The dlib runs use real footage (../shared/media; skipped when absent). The talking clip is trimmed to its
20 frames to keep the tests fast (dlib: ~0.1-0.2 s per frame here for detection + analysis).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.analysis import FaceAnalyzer, MotionFeatures
from pipeline.analysis.dlib_features import EXPRESSION_NAMES, GAZE_NAMES, POSE_NAMES
from pipeline.cli import app
from tests.conftest import MEDIA

runner = CliRunner()
CLIP = "st_WDA_KatieHill_000.mp4"  # frontal, speaking
START_S, N_FRAMES = 0.8, 20  # source frames 20-39: she opens wide and closes in a pause


@pytest.fixture(autouse=True)
def unwrapped_errors():
    """Error messages on one line: rich folds them at 80 columns when not on a terminal."""
    from pipeline.cli import console

    width = console._width
    console.width = 100_000
    yield
    console._width = width


def analyze(*args: str):
    return runner.invoke(app, ["analyze", *map(str, args)])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """20 frames of a real talking-head clip (512 px, 25 fps)."""
    if not MEDIA.is_dir():
        pytest.skip(f"real footage not found at {MEDIA} (it sits in ../shared/media beside the repo)")
    from pipeline.video import read_video, write_video

    frames, info = read_video(MEDIA / "talking" / CLIP, start_s=START_S, end_s=START_S + N_FRAMES / 25)
    assert len(frames) == N_FRAMES
    path = tmp_path_factory.mktemp("clip") / "katie.mp4"
    write_video(path, frames, fps=info.fps)
    return path


def assert_nothing_written(folder: Path, before: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == before, "an output or temporary file was left behind"


# --------------------------------------------------------------------------------------------- dlib


@pytest.mark.media
def test_dlib_on_a_still(media, tmp_path):
    still = media / "stills" / "obama" / "1.jpg"
    out = tmp_path / "o.jsonl"
    result = analyze("--backend", "dlib", still, "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = lines(out)
    assert row["input"] == str(still) and row["frame"] == 0 and row["backend"] == "dlib" and row["found"] is True
    assert {Path(p).name for p in row["weights"]} == {"shape_predictor_68_face_landmarks.dat",
                                                      "dlib_face_recognition_resnet_model_v1.dat"}
    assert all(len(v) == 64 for v in row["weights"].values())
    assert tuple(row["pose"]) == POSE_NAMES and tuple(row["gaze"]) == GAZE_NAMES
    assert tuple(row["expression"]) == EXPRESSION_NAMES
    assert all(isinstance(v, float) for g in ("pose", "gaze", "expression") for v in row[g].values())
    assert len(row["identity"]) == 128 and all(isinstance(v, float) for v in row["identity"])
    assert abs(row["pose"]["yaw"]) < 20  # a frontal portrait


@pytest.mark.media
def test_dlib_on_a_talking_clip_mouth_moves(clip, tmp_path):
    """Measured on these 20 frames: mouth_open 0.01-0.36, std 0.10 (a still face jitters by ~0.006, see
    test_dlib_features); descriptors within 0.38 of the clip's mean."""
    out = tmp_path / "k.jsonl"
    result = analyze("--backend", "dlib", clip, "--out", out, "--batch-size", "8")  # 3 batches
    assert result.exit_code == 0, result.output
    rows = lines(out)
    assert [r["frame"] for r in rows] == list(range(N_FRAMES))
    assert all(r["found"] and r["backend"] == "dlib" and len(r["identity"]) == 128 for r in rows)
    assert len({json.dumps(r["weights"], sort_keys=True) for r in rows}) == 1  # every line names the same files
    mouth = np.array([r["expression"]["mouth_open"] for r in rows])
    assert mouth.min() < 0.05 and mouth.max() > 0.25 and mouth.std() > 0.05, mouth.round(3)  # closes and opens
    # one person throughout: every frame's descriptor is within dlib's threshold of the clip's mean
    ids = np.array([r["identity"] for r in rows])
    assert np.linalg.norm(ids - ids.mean(axis=0), axis=1).max() < 0.6


@pytest.mark.media
def test_compare_same_and_different_person(media, clip):
    same = analyze("--backend", "dlib", "--compare", media / "stills" / "obama" / "1.jpg",
                   media / "stills" / "obama" / "2.jpg")
    assert same.exit_code == 0, same.output
    assert "identity distance (euclidean, backend dlib)" in same.output
    assert "same person: yes (threshold 0.6)" in same.output
    d_same = float(same.output.split("backend dlib): ")[1].split()[0])
    # a video (mean descriptor over its 20 frames) against a photo of someone else
    diff = analyze("--backend", "dlib", "--compare", clip, media / "stills" / "biden" / "1.jpg")
    assert diff.exit_code == 0, diff.output
    assert f"{clip}: {N_FRAMES} frame(s), {N_FRAMES} with a face" in diff.output
    assert "same person: no (threshold 0.6)" in diff.output
    d_diff = float(diff.output.split("backend dlib): ")[1].split()[0])
    assert d_same < 0.6 < d_diff


@pytest.mark.media
def test_no_crop_reads_aligned_crops_as_they_are(media, tmp_path):
    from pipeline.analysis.inputs import load_faces

    crop = load_faces(media / "stills" / "biden" / "2.jpg", 256).frames[0]
    Image.fromarray(crop).save(tmp_path / "face.png")
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    out = tmp_path / "o.jsonl"
    result = analyze("--backend", "dlib", tmp_path / "face.png", "--no-crop", "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = lines(out)
    assert row["found"] and len(row["identity"]) == 128
    # with --no-crop a faceless frame is not an error: it is a line with found false and nulls
    result = analyze("--backend", "dlib", tmp_path / "grey.png", "--no-crop", "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = lines(out)
    assert row["found"] is False and row["identity"] is None and row["pose"] == dict.fromkeys(POSE_NAMES)


# ---------------------------------------------------------------- backends answering one question only


class MotionOnly(FaceAnalyzer):
    """A backend without an identity network (like pyfeat): the base class's identity() raises BackendError."""

    name = "fake-motion"
    input_size = 32

    def motion(self, images):
        n = len(images)
        return MotionFeatures(np.zeros((n, 3)), np.zeros((n, 2)), np.ones((n, 1)), POSE_NAMES, GAZE_NAMES, ("smile",))


def test_identity_only_and_motion_only_backends(monkeypatch, tmp_path):
    import torch

    import pipeline.analysis
    from pipeline.analysis.arcface import ArcFaceAnalyzer

    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(tmp_path / "face.png")
    torch.manual_seed(0)
    backends = {"arcface": ArcFaceAnalyzer(weights={}), "fake-motion": MotionOnly()}  # random IR-SE50: shapes only
    monkeypatch.setattr(pipeline.analysis, "load_analyzer", lambda name, params, **kw: backends[name])
    out = tmp_path / "a.jsonl"
    result = analyze("--backend", "arcface", tmp_path / "face.png", "--no-crop", "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = lines(out)
    assert row["backend"] == "arcface" and row["weights"] == {} and row["found"] is True
    assert row["pose"] is None and row["gaze"] is None and row["expression"] is None
    assert len(row["identity"]) == 512 and abs(np.linalg.norm(row["identity"]) - 1) < 1e-5
    result = analyze("--backend", "fake-motion", tmp_path / "face.png", "--no-crop", "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = lines(out)
    assert row["identity"] is None and row["expression"] == {"smile": 1.0} and row["found"] is True
    # --compare needs identity: the backend's own message names the backends that have it
    result = analyze("--backend", "fake-motion", "--compare", tmp_path / "face.png", tmp_path / "face.png", "--no-crop")
    assert result.exit_code == 2 and "identity backends: toy, arcface, dlib" in result.output


def test_failure_mid_write_leaves_the_previous_output_untouched(monkeypatch, tmp_path):
    import pipeline.analysis
    from pipeline.video import write_video

    class FailsOnSecondBatch(MotionOnly):
        calls = 0

        def motion(self, images):
            FailsOnSecondBatch.calls += 1
            if FailsOnSecondBatch.calls == 2:
                raise ValueError("the backend broke on batch 2")
            return super().motion(images)

    monkeypatch.setattr(pipeline.analysis, "load_analyzer", lambda name, params, **kw: FailsOnSecondBatch())
    write_video(tmp_path / "v.mp4", np.full((3, 32, 32, 3), 90, np.uint8), fps=25)
    out = tmp_path / "o.jsonl"
    out.write_text("previous results\n")
    before = {p.name for p in tmp_path.iterdir()}
    result = analyze("--backend", "fake-motion", tmp_path / "v.mp4", "--no-crop", "--batch-size", "1", "--out", out)
    assert result.exit_code == 2 and "the backend broke on batch 2" in result.output
    assert FailsOnSecondBatch.calls == 2  # the first batch's line had been written (to the temporary file)
    assert out.read_text() == "previous results\n"
    assert_nothing_written(tmp_path, before)


# ------------------------------------------------------------------------------------------- errors


def _corrupt(folder: Path) -> Path:
    path = folder / "x.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _grey(folder: Path) -> Path:
    path = folder / "grey.png"
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(path)
    return path


def _broken_jpg(folder: Path) -> Path:
    path = folder / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    return path


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "nowhere.mp4", "no such file"),
    (_corrupt, "cannot read"),
    (_broken_jpg, "unreadable or corrupt image"),
    (_grey, "no face found"),
])
def test_bad_inputs_exit_2_naming_the_input_and_leave_nothing(tmp_path, make, says):
    src = tmp_path / "in"
    src.mkdir()
    path = make(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = analyze("--backend", "dlib", path, "--out", out_dir / "o.jsonl")
    assert result.exit_code == 2, result.output
    text = result.output
    assert str(path) in text and says in text and "Traceback" not in text
    assert_nothing_written(out_dir, set())


def test_unknown_backend_and_missing_arcface_weights(tmp_path, real_params):
    image = _grey(tmp_path)
    result = analyze("--backend", "openface", image, "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 2 and "unknown face analysis backend 'openface'" in result.output
    assert "toy, arcface, dlib, pyfeat" in result.output
    real_params["assets"]["arcface_ir_se50"]["path"] = str(tmp_path / "weights" / "model_ir_se50.pth")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(real_params))
    before = {p.name for p in tmp_path.iterdir()}
    result = analyze("--backend", "arcface", image, "--out", tmp_path / "o.jsonl", "--params", params)
    assert result.exit_code == 2
    text = result.output
    assert "model_ir_se50.pth" in text and "pixel2style2pixel README" in text
    assert_nothing_written(tmp_path, before)


def test_argument_combinations(tmp_path):
    image = _grey(tmp_path)
    cases = [
        ([], "give an INPUT"),
        ([image], "--out OUT.jsonl is required"),
        ([image, "--out", tmp_path / "o.jsonl", "--compare", image, image], "not both"),
        (["--compare", image, image, "--out", tmp_path / "o.jsonl"], "--out is only for analysing an INPUT"),
    ]
    for args, says in cases:
        result = analyze("--backend", "dlib", *args)
        assert result.exit_code == 2 and says in result.output, (args, result.output)
    assert not (tmp_path / "o.jsonl").exists()


def test_help_lists_the_command():
    result = runner.invoke(app, ["analyze", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--backend", "--out", "--compare", "--no-crop", "--params", "--batch-size"):
        assert option in result.output
