from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.video import VideoError, read_video, write_video


def _moving_square(n=10, h=48, w=64):
    frames = np.zeros((n, h, w, 3), np.uint8)
    for t in range(n):
        frames[t, 10:30, 4 + 3 * t : 24 + 3 * t] = (200, 60, 30)
    return frames


def test_round_trip_keeps_size_count_and_content(tmp_path):
    frames = _moving_square()
    assert write_video(tmp_path / "v.mp4", frames, fps=25) == 10
    decoded, info = read_video(tmp_path / "v.mp4")
    assert decoded.shape == frames.shape
    assert (info.width, info.height, info.n_frames) == (64, 48, 10)
    assert abs(info.fps - 25) < 0.1 and not info.variable_frame_rate and not info.grayscale
    assert np.abs(decoded.astype(int) - frames).mean() < 3


def test_time_range(tmp_path):
    write_video(tmp_path / "v.mp4", _moving_square(20), fps=10)
    decoded, _ = read_video(tmp_path / "v.mp4", start_s=0.5, end_s=1.0)
    assert len(decoded) == 5


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(VideoError, match="corrupt.mp4"):
        read_video(bad)
    with pytest.raises(VideoError, match="no such file"):
        read_video(tmp_path / "absent.mp4")


def test_odd_sizes_are_refused_by_h264_writer_without_leftovers(tmp_path):
    with pytest.raises(VideoError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((3, 47, 64, 3), np.uint8), fps=25)
    assert list(tmp_path.iterdir()) == []


def test_variable_frame_rate_and_grayscale_are_detected(tmp_path):
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        pts = [0, 40, 80, 200, 240, 400, 440]
        for p in pts:
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), format="rgb24")
            f.pts, f.time_base = p, Fraction(1, 1000)
            for packet in s.encode(f):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    _, info = read_video(path)
    assert info.variable_frame_rate
    assert info.grayscale  # R == G == B everywhere


def test_encoding_is_byte_for_byte_reproducible(tmp_path):
    """DVC outputs must not change when a stage re-runs on the same inputs."""
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (12, 6, 8, 3), dtype=np.uint8), 8, axis=1).repeat(8, axis=2)
    sizes = {write_video(tmp_path / f"v{i}.mp4", frames, fps=25) for i in range(3)}
    assert sizes == {12}
    contents = {(tmp_path / f"v{i}.mp4").read_bytes() for i in range(3)}
    assert len(contents) == 1


def test_outputs_are_not_private(tmp_path):
    write_video(tmp_path / "v.mp4", _moving_square(), fps=25)
    assert (tmp_path / "v.mp4").stat().st_mode & 0o044 == 0o044
