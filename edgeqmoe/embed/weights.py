"""Finding pretrained weights: an explicit path, then $EDGEQMOE_WEIGHTS_DIR, then the
user cache directory; downloading only when asked (``edgeqmoe weights fetch``).
Every file is checked against its sha256 before use."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional


@dataclass(frozen=True)
class WeightsSpec:
    name: str
    filename: str
    sha256: str
    size: int
    url: str


MN04_WEIGHTS = WeightsSpec(
    name="mn04",
    filename="mn04_as_mAP_432.pt",
    sha256="899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
    size=4066513,
    url="https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/mn04_as_mAP_432.pt",
)

WEIGHTS = {MN04_WEIGHTS.name: MN04_WEIGHTS}


class WeightsError(Exception):
    """Weights missing or wrong; the message says which file, which sha256, where it
    was looked for, and the command that fetches it."""


def user_cache() -> Path:
    """edgeqmoe's folder in the user's cache ($XDG_CACHE_HOME, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeqmoe"


def cache_dir() -> Path:
    return user_cache() / "weights"


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def candidates(spec: WeightsSpec, explicit: Optional[str] = None) -> List[Path]:
    """Where ``spec`` is looked for, in order."""
    out = []
    if explicit:
        p = Path(explicit).expanduser()
        out.append(p / spec.filename if p.is_dir() else p)
    env = os.environ.get("EDGEQMOE_WEIGHTS_DIR")
    if env:
        out.append(Path(env).expanduser() / spec.filename)
    out.append(cache_dir() / spec.filename)
    return out


def fetch_command(spec: WeightsSpec) -> str:
    return f"edgeqmoe weights fetch {spec.name}"


def resolve(spec: WeightsSpec, explicit: Optional[str] = None) -> Path:
    """The first candidate that exists; it must have the right sha256."""
    looked = candidates(spec, explicit)
    for p in looked:
        if p.is_file():
            got = sha256_of(p)
            if got != spec.sha256:
                raise WeightsError(
                    f"{spec.name} weights at {p} are not the expected file: sha256 {got}, expected "
                    f"{spec.sha256} ({spec.filename}, {spec.size} bytes). Replace it, or run "
                    f"'{fetch_command(spec)}' to download the right one.")
            return p
        if explicit and p == looked[0]:
            raise WeightsError(f"{spec.name} weights: {p} (given explicitly) does not exist. Expected "
                               f"{spec.filename} with sha256 {spec.sha256}.")
    where = ", ".join(str(p) for p in looked)
    place = "that place" if len(looked) == 1 else "one of those places"
    raise WeightsError(
        f"{spec.name} weights not found: {spec.filename} (sha256 {spec.sha256}) was looked for in {where}. "
        f"Run '{fetch_command(spec)}' (needs internet), or put the file in {place}, or set "
        f"EDGEQMOE_WEIGHTS_DIR to the folder that holds it.")


def fetch(spec: WeightsSpec, dest_dir: Optional[str] = None, timeout: float = 60.0) -> Path:
    """Download ``spec`` into ``dest_dir`` (default: the cache), verifying sha256."""
    from urllib.request import urlopen  # here, not at the top: with it the daemon holds ssl (+2 MB)

    dest = Path(dest_dir).expanduser() if dest_dir else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / spec.filename
    if target.is_file() and sha256_of(target) == spec.sha256:
        return target
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=spec.filename + ".")
    try:
        h = hashlib.sha256()
        try:
            with urlopen(spec.url, timeout=timeout) as r, os.fdopen(fd, "wb") as f:
                for block in iter(lambda: r.read(1 << 20), b""):
                    h.update(block)
                    f.write(block)
        except OSError as e:
            why = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise WeightsError(
                f"could not download {spec.name} weights from {spec.url} ({why}). Without internet here: download "
                f"{spec.filename} on a connected machine (or run 'edgeqmoe weights fetch {spec.name} --to FOLDER' "
                f"there), copy it into {dest}, or set EDGEQMOE_WEIGHTS_DIR to the folder that holds it") from None
        if h.hexdigest() != spec.sha256:
            raise WeightsError(f"downloaded {spec.name} weights have sha256 {h.hexdigest()}, expected "
                               f"{spec.sha256}; nothing was saved")
        os.replace(tmp, target)
        return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
