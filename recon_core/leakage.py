"""Which images a run trained on, and keeping them out of its evaluation and threshold.

Identity is the SHA-256 of the file's BYTES, not its path and not its decoded pixels: an import copies files
byte for byte, so "the same photo under two names" (the case met in practice: a copy, or the same file in
train/ and test/) is exactly a byte match; it needs no decoding (cheap for hundreds of files, works for files the
loader refuses); and decoded-pixel hashing would only add the rare lossless re-save while still missing every
re-encoded JPEG. Near-duplicates (the same part photographed twice) are out of reach of any exact hash.

A run's `data.json` lists its training files (`train`, `labelled_defects`) and, since this module, their digests
(`train_sha256`), so the check still works after the project's split has moved or removed the files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str | None:
    """SHA-256 of the file's bytes, or None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def digests(paths: list[str] | list[Path]) -> list[str | None]:
    return [file_digest(p) for p in paths]


@dataclass
class TrainingFiles:
    """What a run trained on: digests of its training files; names only for listed files that are gone and
    were never hashed (runs from before digests were recorded)."""

    digests: set[str] = field(default_factory=set)
    names_only: set[str] = field(default_factory=set)

    @classmethod
    def from_paths(cls, paths: list[str] | list[Path]) -> TrainingFiles:
        out = cls()
        for p in paths:
            d = file_digest(p)
            if d is None:
                out.names_only.add(Path(p).name)
            else:
                out.digests.add(d)
        return out

    def contains(self, path: str | os.PathLike, digest: str | None = None) -> bool:
        digest = digest if digest is not None else file_digest(path)
        if digest is not None and digest in self.digests:
            return True
        return Path(path).name in self.names_only


def training_files(run_dir: str | os.PathLike) -> TrainingFiles | None:
    """From a run folder's data.json (None when the run has none, e.g. a bare bundle)."""
    path = Path(run_dir) / "data.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    listed = [str(p) for p in (data.get("train") or []) + (data.get("labelled_defects") or [])]
    recorded = data.get("train_sha256")
    if isinstance(recorded, list) and len(recorded) == len(listed):
        out = TrainingFiles({d for d in recorded if isinstance(d, str)})
        out.names_only = {Path(p).name for p, d in zip(listed, recorded, strict=True) if not isinstance(d, str)}
        return out
    return TrainingFiles.from_paths(listed)  # an older run: hash the files that are still there


@dataclass
class Exclusion:
    """What `exclude_training` did: removed image paths, and whether training images had to stay (unavoidable)."""

    removed: list[str] = field(default_factory=list)
    kept_training_goods: int = 0  # training goods left in the evaluation because nothing else was there

    def to_metrics(self) -> dict[str, Any]:
        return {
            "excluded_training_images": len(self.removed),
            "evaluation_goods_seen_in_training": self.kept_training_goods > 0,
            "evaluation_training_goods": self.kept_training_goods,
        }


def exclude_training(test: Any, training: TrainingFiles | None) -> tuple[Any, Exclusion]:
    """Drop from an images.TestSet every image identical to one of the run's training files. When that would
    leave no good image at all (a tiny folder evaluated on itself), the goods stay and the exclusion says so."""
    report = Exclusion()
    if training is None or test is None or len(test) == 0:
        return test, report
    seen = np.array([training.contains(p) for p in test.paths], dtype=bool)
    labels = np.asarray(test.labels)
    if seen[labels == 0].all() and (labels == 0).any():  # nothing unseen to judge false alarms on
        report.kept_training_goods = int((labels == 0).sum())
        seen &= labels != 0
    if not seen.any():
        return test, report
    report.removed = [p for p, s in zip(test.paths, seen, strict=True) if s]
    return subset(test, np.flatnonzero(~seen)), report


def subset(test: Any, keep: np.ndarray) -> Any:
    from recon_core.images import TestSet

    return TestSet(
        images=test.images[keep],
        labels=np.asarray(test.labels)[keep],
        masks=test.masks[keep],
        has_masks=test.has_masks,
        paths=[test.paths[i] for i in keep],
        defect_types=[test.defect_types[i] for i in keep],
        problems=list(getattr(test, "problems", [])),
    )


def duplicate_groups(paths: list[str] | list[Path]) -> list[list[str]]:
    """Groups of byte-identical files (the same image under several names)."""
    by_digest: dict[str, list[str]] = {}
    for p in paths:
        d = file_digest(p)
        if d is not None:
            by_digest.setdefault(d, []).append(str(p))
    return [group for group in by_digest.values() if len(group) > 1]
