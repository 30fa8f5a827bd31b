"""`prepare` on real footage (dlib detector and landmarks), through the folder source's manifest."""
import pytest

from pipeline.assets import require
from pipeline.config import DataParams, PrepareParams, validate_params
from pipeline.data import index_folder
from pipeline.prepare import prepare
from pipeline.store import PreparedStore

pytestmark = pytest.mark.media

CLIPS = ["lp_d0", "lp_d12", "st_WDA_AlexandriaOcasioCortez_000", "st_WDA_KatieHill_000"]


def test_real_talking_heads_are_cropped_with_landmarks_and_masks(media, tmp_path, real_params):
    lines = ["path,identity,start,end"] + [f"{media / 'talking' / c}.mp4,{c},0,1.6" for c in CLIPS]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 50)
    with open(tmp_path / "m.csv", "a") as f:
        f.write(f"{tmp_path / 'bad.mp4'},broken,,\n")
    index_folder(tmp_path / "raw", DataParams(source="folder", folder={"manifest": tmp_path / "m.csv"}), tmp_path)
    params = PrepareParams(size=96, min_frames=20, train_frames=10, eval_frames=12, workers=2)
    model = require("dlib_landmarks68", validate_params(real_params).assets)
    manifest, outcomes = prepare(tmp_path / "raw", tmp_path / "prepared", params, seed=0, test_fraction=0.25,
                                 landmarks_model=model, progress=False)
    status = {o.identity: o for o in outcomes}
    assert status["broken"].reason_kind == "unreadable"
    assert all(status[c].status == "kept" for c in CLIPS), {c: status[c].reason for c in CLIPS}
    assert sorted(manifest["identity"]) == sorted(CLIPS)  # one face track per talking head
    assert (manifest["detector"] == "dlib").all()
    store = PreparedStore(tmp_path / "prepared")
    for rec in manifest.to_dict("records"):
        lms, masks = store.landmarks(rec["clip_id"]), store.masks(rec["clip_id"])
        assert rec["x1"] - rec["x0"] == rec["y1"] - rec["y0"]  # square
        # the whole face (68 landmarks) is inside the crop, and not tiny
        assert (lms >= 0).all() and (lms < 96).all()
        span = lms[:, :, 0].max(1) - lms[:, :, 0].min(1)
        assert (span > 0.4 * 96).all()
        # the mask covers the mouth centre (landmarks 62/66) and excludes the crop corners
        mouth = (lms[:, [62, 66]].mean(1)).round().astype(int)
        assert all(m[y, x] for m, (x, y) in zip(masks, mouth))
        assert not masks[:, :4, :4].any()
