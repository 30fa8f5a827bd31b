"""The synthetic talking-head world: cartoon faces whose identity and motion are independent factors.

Public API: names of the parameters, `Identity` / `Motion`, their samplers, `render_clip` (frames plus
per-frame ground truth) and `generate_world` (a whole dataset on disk, with cross-identity renders).
"""
from pipeline.synth.face import (
    EXPRESSION_NAMES,
    GAZE_NAMES,
    HAIR_STYLES,
    IDENTITY_NAMES,
    POSE_NAMES,
    Identity,
    sample_identity,
)
from pipeline.synth.motion import Motion, sample_motion
from pipeline.synth.render import render_clip
from pipeline.synth.world import generate_world

__all__ = [
    "EXPRESSION_NAMES", "POSE_NAMES", "GAZE_NAMES", "IDENTITY_NAMES", "HAIR_STYLES",
    "Identity", "Motion", "sample_identity", "sample_motion", "render_clip", "generate_world",
]
