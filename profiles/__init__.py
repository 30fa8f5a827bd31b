"""Params profiles: named sets of params.yaml overrides (profiles/<name>.yaml, dotted keys), switched to with

    dvc exp run -n <name> $(python -m profiles <name>)      # a DVC experiment with the profile's -S overrides
    python -m profiles <name> --check                       # validate params.yaml + the profile, print the result

Profiles: `toy-full` (the synthetic world, longer training: the method must visibly work on held-out
identities) and `paper` (the paper's setting: 1024 px FFHQ StyleGAN2, ArcFace, CelebV-HQ / HDTF, 200K + 20K
iterations; its assets and datasets are yours to provide, and the first stage that needs a missing one stops
naming the file).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

FOLDER = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def overrides(name: str) -> dict[str, Any]:
    """The profile's {dotted key: value}."""
    path = FOLDER / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no profile {name!r} (profiles: {', '.join(names())})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ValueError(f"{path}: a profile is a mapping of dotted params keys to values")
    return data


def set_params_args(name: str) -> list[str]:
    """`-S key=value` arguments for `dvc exp run` (values in YAML flow style, without spaces)."""
    args = []
    for key, value in overrides(name).items():
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
        if text.endswith("\n...") or text.endswith(" ..."):
            text = text.rsplit("...", 1)[0].strip()
        text = text.replace(", ", ",").replace(": ", ":")
        if " " in text:
            raise ValueError(f"profile {name}: the value of {key} has a space, which `dvc exp run -S` cannot take here")
        args += ["-S", f"{key}={text}"]
    return args
