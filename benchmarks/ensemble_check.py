"""Offline check (stop 21): would a z-scored sum of the autoencoder's and DRAEM's maps, both already trained by `auto`,
beat either? Validation = auto's own probe defects on its held-out goods (z statistics from the held-out goods' maps);
the test split (the candidates' eval.npz) is read for reporting only.

    python benchmarks/ensemble_check.py /tmp/recon-auto-runs/auto-*     (auto run folders kept by bench --keep-runs)
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import torch

from recon_core import auto, auto_choice, metrics
from recon_core.bundle import load_bundle
from recon_core.models.layers import mean_pool_max
from recon_core.probe_defects import make_probe_set
from recon_core.runs import RunSpec

torch.set_num_threads(1)

WEIGHT = 0.5  # equal parts of the two z-scored maps
POOL = 5  # the image score: max of the 5x5 mean-pooled map, as DRAEM scores at 128 px


def pooled_max(maps: np.ndarray) -> np.ndarray:
    return mean_pool_max(torch.from_numpy(np.ascontiguousarray(maps, np.float32)), POOL).numpy()


def check(run: Path) -> dict:
    spec = RunSpec.from_dict(json.loads((run / "spec.json").read_text()))
    cfg = auto.auto_config(spec)
    split = auto._split(spec, cfg)  # the held-out goods auto used
    probes = make_probe_set(split.goods, spec.seed + auto.PROBE_SEED_OFFSET, regions=split.regions)
    goods = probes.labels == 0
    out: dict = {"run": run.name}
    probe_maps, test_maps = {}, {}
    for name in ("autoencoder", "draem"):
        model = load_bundle(run / "candidates" / name / "model.pt", "cpu").model
        model.train_mode(False)
        maps = np.asarray(model.score(probes.images).maps)
        mu, sd = float(maps[goods].mean()), float(maps[goods].std()) + 1e-8  # held-out goods only
        probe_maps[name] = (maps - mu) / sd
        ev = np.load(run / "candidates" / name / "eval.npz")
        test_maps[name] = (ev["maps"].astype(np.float32) - mu) / sd
        labels, masks = ev["labels"], ev["masks"]
        out[name] = {
            "probe_image_auroc": auto_choice.score_candidate(model, probes, None)[0]["probe_image_auroc"],
            "test_image_auroc": metrics.image_auroc(labels, ev["scores"]),
            "test_pixel_auroc": metrics.pixel_auroc(masks, ev["maps"]) if masks.max() > 0 else None,
        }
    probe_ens = WEIGHT * probe_maps["autoencoder"] + (1 - WEIGHT) * probe_maps["draem"]
    test_ens = WEIGHT * test_maps["autoencoder"] + (1 - WEIGHT) * test_maps["draem"]
    probe_scores = pooled_max(probe_ens)
    per_kind = []
    for kind in sorted(set(probes.kinds) - {"good"}):
        sel = goods | np.array([k == kind for k in probes.kinds])
        per_kind.append(metrics.image_auroc(probes.labels[sel], probe_scores[sel]))
    out["ensemble"] = {
        "probe_image_auroc": float(np.mean(per_kind)),
        "test_image_auroc": metrics.image_auroc(labels, pooled_max(test_ens)),
        "test_pixel_auroc": metrics.pixel_auroc(masks, test_ens) if masks.max() > 0 else None,
    }
    return out


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(json.dumps(check(Path(folder)), default=lambda x: None if x is None else round(float(x), 4)), flush=True)
