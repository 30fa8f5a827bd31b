"""`reenact animate` end to end on real footage (../shared/media): every driving frame re-enacted, at the driving
video's frame rate, its audio kept; and the errors a person meets (no face, unreadable file, an encoder of another
generator), each naming the input and the fix and leaving nothing behind."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.animate import animate
from pipeline.reenact import load_models
from tests.conftest import REPO
from tests.test_reenact import SIZE, save_tiny_checkpoints


def _describe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {"rate": Fraction(v.average_rate), "audio": [s.codec_context.name for s in c.streams.audio],
                "width": v.codec_context.width, "height": v.codec_context.height}
        info["frames"] = sum(1 for _ in c.decode(video=0))
    return info


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_checkpoints(tmp_path_factory.mktemp("models"))


def test_animate_real_talking_head_keeps_frames_rate_and_audio(media, checkpoints, tmp_path):
    from pipeline.edits import ganspace_directions
    from pipeline.faces import DlibDetector

    driving = media / "talking" / "lp_d12.mp4"  # 183 frames, 25 fps, AAC audio
    models = load_models(*checkpoints)
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir()
    result = animate(models, media / "stills" / "obama" / "1.jpg", driving, out, detect=DlibDetector(upsample=0),
                     cma={"steps": 2, "lr": 1e-3, "frames_per_step": 2, "lambda_lpips": 0.0},
                     edits=["pc0=0:2"], directions=ganspace_directions(models.G, 2, 256), side_by_side=True,
                     progress=False)
    want, got = _describe(driving), _describe(out)
    assert got["frames"] == want["frames"] == result.frames == 183
    assert got["rate"] == want["rate"] == result.fps
    assert got["audio"] == want["audio"] == ["aac"] and result.audio
    assert (got["width"], got["height"]) == (3 * SIZE, SIZE)  # source | driving | result
    assert result.cma_steps == 2
    with av.open(str(out)) as o, av.open(str(driving)) as d:  # the audio track copied whole
        assert sum(1 for _ in o.demux(audio=0)) == sum(1 for _ in d.demux(audio=0))
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.mp4"]  # no temporary left


def _params_file(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["prepare"]["upsample"] = 0  # face-centred clips: HOG without upsampling finds them, 4x faster
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args: str):
    from pipeline.cli import app

    return CliRunner().invoke(app, ["animate", *map(str, args)])


def test_cli_animates_a_video_source_without_audio(media, checkpoints, tmp_path):
    driving = media / "talking" / "lp_d0.mp4"  # 78 frames, 25 fps, no audio
    g, e = checkpoints
    out = tmp_path / "out.mp4"
    run = _cli("--source", media / "talking" / "st_WDA_KatieHill_000.mp4", "--driving", driving, "--out", out,
               "--generator", g, "--encoder", e, "--params", _params_file(tmp_path), "--no-progress")
    assert run.exit_code == 0, run.output
    assert "78 frame(s) at 25 fps, no audio in the driving video" in run.output
    got, want = _describe(out), _describe(driving)
    assert (got["frames"], got["rate"], got["audio"]) == (want["frames"], want["rate"], [])
    assert (got["width"], got["height"]) == (SIZE, SIZE)


def test_cli_errors_name_the_input_and_the_fix(media, checkpoints, tmp_path):
    from pipeline.models.stylegan2 import Generator
    from pipeline.models.stylegan2_formats import save_native
    from pipeline.video import write_video

    g, e = checkpoints
    params = _params_file(tmp_path)
    out = tmp_path / "o" / "out.mp4"
    out.parent.mkdir()
    still = media / "stills" / "obama" / "1.jpg"
    blank = tmp_path / "blank.mp4"
    write_video(blank, (np.full((64, 64, 3), 128, np.uint8) for _ in range(5)), 25)
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    other = tmp_path / "other_generator.pt"
    save_native(Generator(SIZE, style_dim=16, n_mlp=3, channel_multiplier=1, channel_max=16), other)
    cases = [
        (["--source", still, "--driving", blank], [str(blank), "no face found in any of its 5 frames", "--no-crop"]),
        (["--source", still, "--driving", broken], [str(broken), "re-encode"]),
        (["--source", blank, "--driving", media / "talking" / "lp_d0.mp4"], [str(blank), "no face found"]),
        (["--source", tmp_path / "nope.jpg", "--driving", blank], ["nope.jpg: no such file"]),
    ]
    for args, needles in cases:
        run = _cli(*args, "--out", out, "--generator", g, "--encoder", e, "--params", params, "--no-progress")
        assert run.exit_code == 2, run.output
        text = " ".join(run.output.split())
        for needle in needles:
            assert needle in text, (needle, text)
    run = _cli("--source", still, "--driving", blank, "--out", out, "--generator", other, "--encoder", e,
               "--params", params, "--no-progress")
    assert run.exit_code == 2 and "trained for another generator" in " ".join(run.output.split())
    run = _cli("--source", still, "--driving", media / "talking" / "lp_d0.mp4", "--out", out, "--generator", g,
               "--encoder", e, "--params", params, "--no-progress", "--edit", "glasses=1",
               "--edits-file", tmp_path / "absent.pt")  # only GANSpace directions then
    assert run.exit_code == 2 and "no direction 'glasses'" in " ".join(run.output.split())
    assert list(out.parent.iterdir()) == []  # nothing half-written, no temporary left
