"""Pre-trained networks as assets: a path and a sha256 in params.yaml, checked before use, never downloaded."""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipeline.errors import UserError
from pipeline.config import Asset
from pipeline.paths import REPO_ROOT


class AssetError(UserError, FileNotFoundError):
    """A required pre-trained file is missing or is not the expected file; the message says how to get it."""


@dataclass(frozen=True)
class AssetStatus:
    name: str
    path: Path | None  # None: the package that should ship it is not installed
    status: str  # present | missing | checksum-mismatch | unverified (no published sha256)
    source: str
    used_by: tuple[str, ...]


def resolve_path(spec: str) -> Path | None:
    """`pkg:<package>/<file>` -> the file inside the installed package (found without importing it, since
    some packages have import-time side effects or requirements); otherwise a path relative to the repo."""
    if spec.startswith("pkg:"):
        package, _, inner = spec[4:].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            return None
        return Path(list(found.submodule_search_locations)[0]) / inner
    path = Path(spec).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


@lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:  # size and mtime key the cache
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


def check(name: str, asset: Asset) -> AssetStatus:
    path = resolve_path(asset.path)
    if path is None or not path.is_file():
        status = "missing"
    elif asset.sha256 is None:
        status = "unverified"
    else:
        status = "present" if sha256_of(path) == asset.sha256 else "checksum-mismatch"
    return AssetStatus(name, path, status, asset.source, tuple(asset.used_by))


def require(name: str, assets: dict[str, Asset]) -> Path:
    """The verified path of asset `name`, or an AssetError naming the file and how to obtain it."""
    if name not in assets:
        raise AssetError(f"params.yaml: assets.{name} is not declared; add it with its path, sha256 and source")
    result = check(name, assets[name])
    where = result.path or assets[name].path
    if result.status == "missing":
        raise AssetError(f"asset '{name}' is missing: expected {where}. Get it: {result.source}")
    if result.status == "checksum-mismatch":
        raise AssetError(
            f"asset '{name}' at {where} has sha256 {sha256_of(result.path)}, expected {assets[name].sha256}: "
            f"it is a different file. Get the right one: {result.source}"
        )
    return result.path
