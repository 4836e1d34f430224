"""Export a trained bundle: an ONNX file of the scoring path (checked against torch with onnxruntime), and a zip
with everything needed to use or reproduce the model outside Recon Studio."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon_core.errors import CheckpointError, ConfigError, ReconError

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ["image_score", "anomaly_map"]
OPSET = 17
PARITY_RTOL = 1e-3
PARITY_ATOL = 1e-4


def _bundle(bundle: Any) -> Any:
    from recon_core.bundle import LoadedBundle, load_bundle

    return bundle if isinstance(bundle, LoadedBundle) else load_bundle(bundle, "cpu")


def _export(module: torch.nn.Module, dummy: torch.Tensor, out: Path) -> str:
    """TorchScript-based exporter first (dynamo=False: mature, no extra dependencies at runtime); the dynamo
    exporter as a fallback for graphs it cannot trace."""
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": OUTPUT_NAMES,
        "opset_version": OPSET,
        "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
    }
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    kw = {k: v for k, v in kwargs.items() if k != "dynamic_axes"}
                    kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
                    torch.onnx.export(module, (dummy,), str(out), dynamo=True, **kw)
                else:
                    torch.onnx.export(module, (dummy,), str(out), dynamo=False, **kwargs)
            return "dynamo" if dynamo else "torchscript"
        except Exception as exc:  # exporter failures come in many types
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(exc).__name__}: {exc}"[:400])
            log.debug("ONNX export attempt failed: %s", errors[-1])
    raise ReconError("ONNX export failed: " + " | ".join(errors))


def export_onnx(bundle_path: Any, out_path: str | Path, *, check: bool = True, batch: int = 2) -> dict[str, Any]:
    """Write the model's scoring path as ONNX: input "image" (B, 3, S, S) float32 RGB in [0, 1], no
    normalisation; outputs "image_score" (B,) and "anomaly_map" (B, S, S). With `check`, run it in onnxruntime on
    seeded random inputs and refuse (ReconError) if it differs from torch. Returns facts about the export."""
    loaded = _bundle(bundle_path)
    model = loaded.model
    model.to("cpu")
    model.train_mode(False)
    module = model.scoring_module().eval()  # with the map normalisation; ConfigError if the model cannot export
    size = int(model.config.image_size)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    dummy = torch.rand(batch, 3, size, size, generator=gen)
    tmp = out.with_name(f".{out.name}.tmp")
    with torch.no_grad():
        exporter = _export(module, dummy, tmp)
    info: dict[str, Any] = {
        "path": str(out),
        "exporter": exporter,
        "opset": OPSET,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32", "range": [0, 1]},
        "outputs": {OUTPUT_NAMES[0]: ["batch"], OUTPUT_NAMES[1]: ["batch", size, size]},
    }
    if check:
        info.update(_check_parity(module, tmp, size))
    tmp.replace(out)
    return info


def _check_parity(module: torch.nn.Module, onnx_path: Path, size: int) -> dict[str, Any]:
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, size, size, generator=gen)  # another batch size than the export's: checks dynamic batch
    with torch.no_grad():
        ref_scores, ref_maps = (t.numpy() for t in module(x))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got_scores, got_maps = session.run(OUTPUT_NAMES, {INPUT_NAME: x.numpy()})
    diff = {
        "max_abs_diff_score": float(np.max(np.abs(got_scores - ref_scores))),
        "max_abs_diff_map": float(np.max(np.abs(got_maps - ref_maps))),
    }
    scale = max(1.0, float(np.max(np.abs(ref_maps))), float(np.max(np.abs(ref_scores))))
    ok = got_scores.shape == ref_scores.shape and got_maps.shape == ref_maps.shape
    ok = ok and np.allclose(got_scores, ref_scores, rtol=PARITY_RTOL, atol=PARITY_ATOL * scale)
    ok = ok and np.allclose(got_maps, ref_maps, rtol=PARITY_RTOL, atol=PARITY_ATOL * scale)
    if not ok:
        onnx_path.unlink(missing_ok=True)
        raise ReconError(f"ONNX export: onnxruntime output differs from torch ({diff}); the file was not written")
    return {"parity": "ok", **diff}


RUNTIME_FILES = ("preprocess.py", "predict_onnx.py")  # shipped verbatim: the app's preprocessing + a scorer

README = """Recon Studio model export
=========================

model.pt         the Recon Studio bundle (load with `python -m recon_core predict model.pt IMAGES...`)
model.onnx       the scoring network as ONNX {onnx_note}
predict_onnx.py  scores images with model.onnx and threshold.json (numpy, Pillow, OpenCV, onnxruntime only)
preprocess.py    the app's own image preprocessing (used by predict_onnx.py): use it, or scores will differ
spec.json        how the model was trained (data, model, preset, synthetic-defect design, budget, seed)
config.json      the model configuration
threshold.json   the decision threshold: score >= value -> reject; review_below <= score < value -> review
metrics.json     the run's current evaluation and training facts

Evaluation
----------
{evaluation}

Threshold
---------
{threshold}

Running model.onnx
------------------
    pip install numpy pillow opencv-python-headless onnxruntime
    python predict_onnx.py part1.png part2.jpg        # CSV: path, score, verdict

or from Python (in this folder):

    from predict_onnx import OnnxModel
    model = OnnxModel("model.onnx", "threshold.json")
    print(model.predict(["part.png"]))

Input  "image": float32, shape (batch, 3, {size}, {size}), RGB, values in [0, 1], NO mean/std normalisation,
       made by preprocess.model_input(path, {size}): EXIF orientation, transparency on black, then OpenCV resize
       (INTER_AREA when shrinking, Lanczos when enlarging). Other resize filters (PIL's default, bilinear) give
       other scores, enough to flip verdicts near the threshold.
Output "image_score": (batch,) float32, higher = more anomalous. Compare with threshold.json.
Output "anomaly_map": (batch, {size}, {size}) float32, where the anomaly is.
"""


def _evaluation_text(metrics: dict[str, Any]) -> str:
    from recon_core.evaluation import evaluated_on

    if not metrics or "n_good" not in metrics:
        return "No evaluation recorded."
    figures = ", ".join(
        f"{label} {metrics[key]:.3f}"
        for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
        if isinstance(metrics.get(key), int | float)
    )
    lines = [f"Evaluated on {evaluated_on(metrics)}: {figures or 'no figures'}."]
    if metrics.get("synthetic"):
        lines.append("Synthetic defects only: no real defect images were available, so these figures are optimistic.")
    lines += [f"WARNING: {w}" for w in metrics.get("warnings") or []]
    return "\n".join(lines)


def export_bundle_zip(run_dir: str | Path, out_zip: str | Path, *, include_onnx: bool = True) -> dict[str, Any]:
    """Zip a run: model.pt, model.onnx (when the model supports export) with predict_onnx.py + preprocess.py,
    spec/config/threshold/metrics JSON and a README.txt that states the current evaluation and whether the threshold
    is provisional. Returns {"path", "files", "onnx"}."""
    from recon_core.bundle import read_metadata
    from recon_core.config import from_dict
    from recon_core.metrics import Threshold, describe_threshold

    run_dir = Path(run_dir)
    bundle_path = run_dir / "model.pt" if run_dir.is_dir() else run_dir
    if not bundle_path.is_file():
        raise CheckpointError(f"{run_dir}: no model.pt (is the run finished?)")
    meta = read_metadata(bundle_path)
    size = int(meta["config"].get("image_size", 0))
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    threshold = meta.get("threshold")
    files: dict[str, bytes] = {
        "model.pt": bundle_path.read_bytes(),
        "config.json": json.dumps({"model": meta["model"], **meta["config"]}, indent=2).encode(),
        "threshold.json": json.dumps(threshold, indent=2).encode(),
    }
    if (bundle_path.parent / "spec.json").is_file():
        files["spec.json"] = (bundle_path.parent / "spec.json").read_bytes()
    metrics: dict[str, Any] = {}
    if (bundle_path.parent / "metrics.json").is_file():
        metrics = json.loads((bundle_path.parent / "metrics.json").read_text())
        metrics["threshold"] = threshold  # the bundle's threshold is the one in use (the page may have changed it)
        files["metrics.json"] = json.dumps(metrics, indent=2).encode()
    onnx_note, exported = "(not included)", False
    if include_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                info = export_onnx(bundle_path, Path(tmp) / "model.onnx")
                files["model.onnx"] = (Path(tmp) / "model.onnx").read_bytes()
                onnx_note = (
                    f"(opset {info['opset']}, checked against torch: max map diff {info['max_abs_diff_map']:.2g})"
                )
                exported = True
            except ConfigError as exc:
                onnx_note = f"(not included: {exc})"
    if exported:
        for name in RUNTIME_FILES:
            files[name] = (Path(__file__).parent / name).read_bytes()
    thr = from_dict(Threshold, threshold, where="threshold") if threshold else None
    files["README.txt"] = README.format(
        onnx_note=onnx_note,
        size=size,
        evaluation=_evaluation_text(metrics),
        threshold=describe_threshold(thr)
        if thr
        else "None saved: set one on the Threshold page or with `python -m recon_core threshold`.",
    ).encode()
    tmp_zip = out_zip.with_name(f".{out_zip.name}.tmp")
    with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    tmp_zip.replace(out_zip)
    return {"path": str(out_zip), "files": sorted(files), "onnx": exported}
