"""Labelled audio datasets from a metadata CSV or a folder tree.

Layouts understood (``read_dataset(path)``; ``path`` is the CSV or its folder):

* UrbanSound8K style ``metadata.csv`` with columns ``file, fsID, fold, classID,
  class``, ``file`` relative to the CSV's folder (the original
  ``UrbanSound8K.csv`` with ``slice_file_name`` is read too: files under
  ``audio/fold<N>/``). Group = fsID (the source recording).
* ESC-50 ``esc50.csv`` (``filename, fold, target, category``), audio under
  ``<root>/audio`` where the CSV lives in ``<root>/meta``. Group = the clip's source
  id (``<fold>-<src>-<take>-<target>.wav``'s second field).
* A folder per class: ``<root>/<class>/<file>``; classes sorted by name, fold -1
  (none), group = the file's stem.

Every clip has: path, label (int), fold (int, -1 if none), group (str) and file id
(the path relative to the dataset root, with '/').
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

AUDIO_EXT = (".wav", ".flac", ".ogg", ".mp3", ".oga", ".aiff", ".aif")


class DatasetError(Exception):
    """A dataset that cannot be read; the message names the file and the problem."""


@dataclass
class Clip:
    path: str
    label: int
    fold: int
    group: str
    file_id: str


@dataclass
class Dataset:
    name: str
    root: str
    classes: List[str]
    clips: List[Clip] = field(default_factory=list)
    layout: str = ""

    def __len__(self) -> int:
        return len(self.clips)


def _read_csv(path: Path) -> List[dict]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def _classes_from(rows, label_key, name_key, path) -> List[str]:
    names = {}
    for r in rows:
        try:
            lab = int(r[label_key])
        except (KeyError, ValueError):
            raise DatasetError(f"{path}: bad {label_key!r} value {r.get(label_key)!r}") from None
        if names.setdefault(lab, r[name_key]) != r[name_key]:
            raise DatasetError(f"{path}: label {lab} is both {names[lab]!r} and {r[name_key]!r}")
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{path}: labels must be 0..{len(names) - 1}, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def _from_csv(csv_path: Path) -> Dataset:
    rows = _read_csv(csv_path)
    cols = set(rows[0])
    if {"file", "fsID", "fold", "classID", "class"} <= cols or {"slice_file_name", "fsID", "fold", "classID", "class"} <= cols:
        root = csv_path.parent
        classes = _classes_from(rows, "classID", "class", csv_path)
        clips = []
        for r in rows:
            rel = r["file"] if "file" in r else f"fold{r['fold']}/{r['slice_file_name']}"
            base = root if "file" in r else (root.parent / "audio" if root.name == "metadata" else root / "audio")
            clips.append(Clip(str(base / rel), int(r["classID"]), int(r["fold"]), str(r["fsID"]), rel.replace(os.sep, "/")))
        return Dataset(root.name, str(root), classes, clips, "urbansound8k")
    if {"filename", "fold", "target", "category"} <= cols:
        root = csv_path.parent.parent if csv_path.parent.name == "meta" else csv_path.parent
        classes = _classes_from(rows, "target", "category", csv_path)
        clips = []
        for r in rows:
            parts = r["filename"].split("-")
            group = parts[1] if len(parts) > 2 else r["filename"]
            clips.append(Clip(str(root / "audio" / r["filename"]), int(r["target"]), int(r["fold"]), group,
                              "audio/" + r["filename"]))
        return Dataset(root.name, str(root), classes, clips, "esc50")
    raise DatasetError(f"{csv_path}: unknown columns {sorted(cols)}; expected UrbanSound8K "
                       "(file, fsID, fold, classID, class) or ESC-50 (filename, fold, target, category)")


def _from_tree(root: Path) -> Dataset:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no metadata CSV and no class folders")
    clips = []
    for i, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in AUDIO_EXT:
                rel = f.relative_to(root).as_posix()
                clips.append(Clip(str(f), i, -1, f.stem, rel))
    if not clips:
        raise DatasetError(f"{root}: class folders hold no audio files ({', '.join(AUDIO_EXT)})")
    return Dataset(root.name, str(root), classes, clips, "folders")


def read_dataset(path) -> Dataset:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_file():
        return _from_csv(p)
    for name in ("metadata.csv", "meta/esc50.csv", "metadata/UrbanSound8K.csv", "UrbanSound8K.csv"):
        if (p / name).is_file():
            return _from_csv(p / name)
    return _from_tree(p)
