"""Score images with an exported Recon Studio model (model.onnx) outside Recon Studio.

Shipped in every export zip next to `preprocess.py` (the app's own preprocessing, verbatim), `model.onnx` and
`threshold.json`. Needs only numpy, Pillow, OpenCV and onnxruntime:

    pip install numpy pillow opencv-python-headless onnxruntime
    python predict_onnx.py part1.png part2.jpg          # prints path, score, verdict (CSV)

or from Python:

    from predict_onnx import OnnxModel
    model = OnnxModel("model.onnx", "threshold.json")
    for row in model.predict(["part1.png"]):
        print(row["path"], row["score"], row["verdict"])

Verdicts: score >= threshold -> reject; review_below <= score < threshold -> review; else accept.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

if __package__:  # inside Recon Studio (recon_core.predict_onnx)
    from .preprocess import model_input, to_nchw
else:  # the export zip: preprocess.py lies next to this file
    from preprocess import model_input, to_nchw

HERE = Path(__file__).resolve().parent


def verdict(score: float, threshold: dict[str, Any] | None) -> str | None:
    """accept / review / reject for one score (None without a threshold); a NaN score goes to review."""
    if threshold is None:
        return None
    if not np.isfinite(score):
        return "review"
    if score >= threshold["value"]:
        return "reject"
    review = threshold.get("review_below")
    return "review" if review is not None and score >= review else "accept"


class OnnxModel:
    """model.onnx + threshold.json: scores, anomaly maps and verdicts for image files."""

    def __init__(
        self, onnx_path: str | os.PathLike = HERE / "model.onnx", threshold_path: Any = HERE / "threshold.json"
    ):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.size = int(self.session.get_inputs()[0].shape[-1])
        self.threshold = None
        if threshold_path is not None and Path(threshold_path).is_file():
            self.threshold = json.loads(Path(threshold_path).read_text())

    def score_arrays(self, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """(N, size, size, 3) float32 RGB in [0, 1] -> (scores (N,), maps (N, size, size))."""
        scores, maps = [], []
        for i in range(0, len(images), batch):
            s, m = self.session.run(["image_score", "anomaly_map"], {"image": to_nchw(images[i : i + batch])})
            scores.append(s)
            maps.append(m)
        return np.concatenate(scores).astype(np.float64), np.concatenate(maps)

    def predict(self, paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
        """One row per file: path, score, verdict (None without a threshold), problem (None or why it failed)."""
        rows: list[dict[str, Any]] = []
        for path in paths:
            try:
                x = model_input(path, self.size)[None]
            except Exception as exc:  # an unreadable file is that file's problem, never the others'
                rows.append({"path": str(path), "score": None, "verdict": None, "problem": str(exc)})
                continue
            score = float(self.score_arrays(x)[0][0])
            rows.append({"path": str(path), "score": score, "verdict": verdict(score, self.threshold), "problem": None})
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score images with an exported Recon Studio model.")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default=str(HERE / "model.onnx"))
    parser.add_argument("--threshold", default=str(HERE / "threshold.json"))
    args = parser.parse_args(argv)
    rows = OnnxModel(args.model, args.threshold).predict(args.images)
    writer = csv.DictWriter(sys.stdout, ["path", "score", "verdict", "problem"])
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "score": "" if row["score"] is None else f"{row['score']:.6g}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
