"""`python -m recon_core data check PATH [--size N] [--json]`: what a data set holds and what is wrong with it."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from recon_core.errors import DataError, ReconError
from recon_core.images import (
    SUPPORTED_SUFFIXES,
    display_path,
    find_duplicates,
    is_mvtec_layout,
    list_images,
    load_dataset,
)


def _all_files(root: Path) -> list[Path]:
    if not is_mvtec_layout(root):
        return list_images(root)
    files: list[Path] = []
    for part in ("train", "test", "ground_truth"):
        base = root / part
        if base.is_dir():
            for sub in sorted(d for d in base.iterdir() if d.is_dir()):
                files.extend(list_images(sub))
    return files


def _part(root: Path, shown: str) -> str:
    """'train' / 'test' / 'ground_truth' for a file of an MVTec layout (by its displayed path), else ''."""
    rel = Path(shown).relative_to(display_path(root)) if shown.startswith(display_path(root)) else Path(shown)
    return rel.parts[0] if len(rel.parts) > 1 else ""


def _survey(files: list[Path]) -> tuple[Counter, Counter]:
    """Sizes and modes from the headers only (nothing is decoded)."""
    sizes: Counter = Counter()
    modes: Counter = Counter()
    for path in files:
        try:
            with Image.open(path) as img:
                sizes[f"{img.size[0]}x{img.size[1]}"] += 1
                modes[img.mode] += 1
        except Exception:  # unreadable headers are reported as problems by the loader
            continue
    return sizes, modes


def data_report(path: str | os.PathLike, size: int = 256) -> dict[str, Any]:
    """A JSON-ready report; raises DataError when the data set is unusable (e.g. < 2 usable training images)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{display_path(root)}: folder not found")
    files = _all_files(root)
    sizes, modes = _survey(files)
    dataset = load_dataset(root, size)
    report: dict[str, Any] = {
        "path": display_path(root),
        "layout": "mvtec" if is_mvtec_layout(root) else "folder",
        "train_good": len(dataset.train.paths),
        "test_good": 0,
        "test_defects": {},
        "masks": 0,
        "has_masks": False,
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes.most_common()),
        "problems": [{"path": display_path(p.path), "reason": p.reason} for p in dataset.train.problems],
        "duplicates": [[display_path(p) for p in group] for group in find_duplicates(files)],
    }
    for group in report["duplicates"]:  # the same image twice: counted twice, and a leak across train / test
        across = len({_part(root, p) for p in group}) > 1
        report["problems"].append(
            {
                "path": group[0],
                "reason": f"byte-identical to {', '.join(group[1:])}"
                + (
                    ": the same image in training and test data, so evaluation judges the model on what it learnt"
                    if across
                    else ": the same image counted more than once"
                ),
            }
        )
    test = dataset.test
    if test is not None:
        kinds = Counter(test.defect_types)
        report["test_good"] = kinds.pop("good", 0)
        report["test_defects"] = dict(sorted(kinds.items()))
        report["masks"] = int((test.masks.reshape(len(test), -1).max(axis=1) > 0).sum()) if len(test) else 0
        report["has_masks"] = test.has_masks
        report["problems"] += [{"path": display_path(p.path), "reason": p.reason} for p in test.problems]
    return report


def _print_report(report: dict[str, Any]) -> None:
    print(f"data set   {report['path']} ({report['layout']} layout)")
    print(f"train good {report['train_good']}")
    if report["layout"] == "mvtec":
        print(f"test good  {report['test_good']}")
        for kind, count in report["test_defects"].items():
            print(f"test {kind:<12} {count}")
        print(f"masks      {report['masks']} non-empty" + ("" if report["has_masks"] else " (no ground_truth folder)"))
    print("sizes      " + ", ".join(f"{k} ({v})" for k, v in report["sizes"].items()))
    print("modes      " + ", ".join(f"{k} ({v})" for k, v in report["modes"].items()))
    if report["duplicates"]:
        print(f"duplicates {len(report['duplicates'])} group(s) of byte-identical files (listed under problems):")
        for group in report["duplicates"]:
            print("  " + " = ".join(group))
    if report["problems"]:
        print(f"problems   {len(report['problems'])}:")
        for problem in report["problems"]:
            print(f"  {problem['path']}: {problem['reason']}")
    else:
        print("problems   none")


def check(args: argparse.Namespace) -> int:
    if args.size < 16:
        raise ReconError(f"--size must be at least 16, got {args.size}")
    report = data_report(args.path, args.size)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect a data set")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)
    chk = sub.add_parser(
        "check",
        help="count images, list sizes/modes and problems; exit 1 if unusable",
        description="Formats: " + " ".join(SUPPORTED_SUFFIXES),
    )
    chk.add_argument("path", help="an MVTec-layout folder (train/good, test/<type>, ground_truth/<type>) or a folder")
    chk.add_argument("--size", type=int, default=256, help="load resolution (default 256)")
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.set_defaults(handler=check)
