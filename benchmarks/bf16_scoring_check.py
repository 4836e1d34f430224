"""Is a bf16-trained DRAEM's accuracy lost in training or in scoring? Scores one kept run's evaluation images four
ways and prints image / pixel AUROC and AUPRO for each:

- `fp32`: the networks in fp32 (what the product does after training in any precision);
- `bf16_autocast`: the numerics the model trained in;
- `recal_fp32` / `recal_bf16`: batch-norm statistics gathered afresh (cumulative average over N synthetic training
  batches from the run's own goods and defect generator) in fp32 / bf16, then scored in fp32.

If the scores differ, the loss is a train/score mismatch (fixable after training); if not, it is in the weights.
A diagnosis, not a tuning step: it chooses nothing.

    python benchmarks/bf16_scoring_check.py RUN_FOLDER DATA [N=50] [--out results/bf16_scoring_check.jsonl]
(RUN_FOLDER: a run kept by `bench --keep-runs`; its data.json names the training goods, which leave the evaluation.)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_core import metrics
from recon_core.bundle import load_bundle
from recon_core.images import load_dataset, load_images
from recon_core.leakage import exclude_training, training_files
from recon_core.models.draem import DraemSynth
from recon_core.models.layers import mean_pool_max
from recon_core.synth import DefectGenerator


def score(model, nets: torch.nn.Module, test, autocast: bool) -> dict[str, float]:
    nets.eval()
    scores, maps = [], []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, len(test.images), 8):
            x = torch.from_numpy(np.ascontiguousarray(test.images[start : start + 8].transpose(0, 3, 1, 2))).float()
            if model.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            _, logits = nets(x)
            m = torch.softmax(logits.float(), 1)[:, 1]
            scores.append(mean_pool_max(m, model.pool_size))
            maps.append(m)
    result = metrics.evaluate(
        np.asarray(test.labels), torch.cat(scores).numpy().astype(np.float64), test.masks, torch.cat(maps).numpy()
    )
    return {k: round(float(result[k]), 4) for k in ("image_auroc", "pixel_auroc", "aupro") if result.get(k) is not None}


def recalibrated(model, synth_config, train: np.ndarray, batches: int, bf16: bool) -> torch.nn.Module:
    """A copy of the networks whose batch-norm running statistics are re-gathered on synthetic training batches."""
    nets = copy.deepcopy(model.nets)
    for module in nets.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    synth = DraemSynth(DefectGenerator(synth_config, model.cfg.image_size, goods=train), model.cfg.train_crop)
    rng = np.random.default_rng(123)
    nets.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(batches):
            x = torch.from_numpy(synth(train[rng.integers(0, len(train), 8)], rng)["augmented"]).float()
            if model.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            nets(x)
    for module in nets.modules():  # SSPCAB keeps its last training loss (a graph) otherwise
        if hasattr(module, "last_loss"):
            module.last_loss = None
    return nets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data")
    ap.add_argument("batches", type=int, nargs="?", default=50)
    ap.add_argument("--out", type=Path, help="append one JSON line with the figures")
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load_bundle(args.run / "model.pt", device="cpu")
    model = loaded.model
    test, _ = exclude_training(load_dataset(args.data, model.cfg.image_size).test, training_files(args.run))
    train = load_images(json.loads((args.run / "data.json").read_text())["train"], model.cfg.image_size).images
    trained_in = json.loads((args.run / "metrics.json").read_text()).get("precision")
    out: dict[str, object] = {"run": args.run.name, "precision": trained_in, "batches": args.batches}
    out["fp32"] = score(model, model.nets, test, autocast=False)
    out["bf16_autocast"] = score(model, model.nets, test, autocast=True)
    for bf16 in (False, True):
        nets = recalibrated(model, loaded.synth_config, train, args.batches, bf16)
        out[f"recal_{'bf16' if bf16 else 'fp32'}"] = score(model, nets, test, autocast=False)
    print(json.dumps(out, indent=1))
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
