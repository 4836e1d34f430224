"""How much device memory a training run will need, and whether it fits, said before the run starts.

need = weights + gradients + optimizer state + activations x ACTIVATION_FACTOR + a fixed device overhead.

- Weights are counted at the real configuration on the `meta` device (no memory, no compute).
- Gradients are one float32 per trainable weight; optimizer state is measured (Adam: two per weight).
- Activations are *measured*: one real training step of every stage at a small probe size (PROBE_SIZE px, batch
  PROBE_BATCH) on the CPU, counting the bytes autograd keeps for the backward pass (saved-tensor hooks, weights
  excluded, shared storages counted once); the networks are fully convolutional, so that scales with
  batch x pixels. The largest stage counts.
- ACTIVATION_FACTOR covers what saved tensors miss (forward temporaries, gradients of activations during the
  backward pass, allocator slack). Calibrated by benchmarks/memory_calibration.py: peak RSS of a real CPU step in a
  fresh process at two sizes vs this estimate (figures in notes/gpu.md).
- Mixed precision (bf16/fp16 autocast on CUDA) keeps most activations in 16 bits: AMP_ACTIVATION_SHARE.

The probe is cached per (model, configuration), so a page can ask on every rerun.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recon_core.errors import ConfigError, ReconError

PROBE_SIZE = 64
PROBE_BATCH = 2
ACTIVATION_FACTOR = 1.5  # CPU calibration implied 1.08-1.47 (DRAEM 64/128 px, batch 8/16; DSR 128 px): above the top
AMP_ACTIVATION_SHARE = 0.6  # 16-bit autocast: conv/matmul outputs halve, norms/losses stay float32
CUDA_OVERHEAD_BYTES = 512 * 2**20  # cuDNN workspaces, allocator rounding (the CUDA context is outside mem_get_info)
CPU_OVERHEAD_BYTES = 256 * 2**20  # interpreter, torch, data arrays
SAFETY = 0.9  # refuse when the estimate is above this share of the free memory
GB = 1e9

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs on its device, by part."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    image_size: int  # side of what a training step sees (the crop side when training on crops)
    batch_size: int
    mixed_precision: bool

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def describe(self) -> str:
        return (
            f"about {self.total / GB:.1f} GB at batch {self.batch_size}, {self.image_size} px "
            f"(weights {self.weights / GB:.2f}, gradients + optimizer {(self.gradients + self.optimizer) / GB:.2f}, "
            f"activations {self.activations / GB:.2f}{', mixed precision' if self.mixed_precision else ''})"
        )


def _saved_bytes(fn: Any, exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd saves for backward while `fn` runs (storages in `exclude` not)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in exclude:
                seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse): ignore
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _meta_counts(cls: Any, config: Any) -> int:
    """Trainable weights of `config`'s networks, counted without allocating them."""
    try:
        with torch.device("meta"):
            model = cls(config, "meta")
        return sum(p.numel() for net in model.networks().values() for p in net.parameters() if p.requires_grad)
    except (RuntimeError, NotImplementedError, TypeError):  # a model that cannot be built on meta: build it for real
        model = cls(config, "cpu")
        return sum(p.numel() for net in model.networks().values() for p in net.parameters() if p.requires_grad)


@functools.lru_cache(maxsize=64)
def _probe(model_name: str, config_json: str) -> tuple[int, int, int, int]:
    """(trainable weights at the real size, activation bytes per image-pixel, optimizer bytes per weight, probe px)."""
    from recon_core.models import get_model_class

    cls = get_model_class(model_name)
    config = cls.config_class(**json.loads(config_json))
    with torch.random.fork_rng():  # building and stepping the probe draws random numbers: not from the run's streams
        return _probe_model(cls, config)


def training_side(config: Any) -> int:
    """Side of the images a training step sees: the crop side for models trained on random crops (`train_crop`,
    e.g. DRAEM's `cpu-hires`), else the image size."""
    crop = int(getattr(config, "train_crop", 0) or 0)
    return crop if crop > 0 else int(config.image_size)


def _probe_model(cls: Any, config: Any) -> tuple[int, int, int, int]:
    from recon_core.synth import SynthConfig

    weights = _meta_counts(cls, config)
    size = min(int(config.image_size), PROBE_SIZE)
    changes: dict[str, Any] = {"image_size": size, "batch_size": PROBE_BATCH}
    if getattr(config, "train_crop", 0):  # the probe steps on whole probe images; estimate() scales by the crop side
        changes["train_crop"] = 0
    probe_cfg = dataclasses.replace(config, **changes)
    model = cls(probe_cfg, "cpu")
    images = np.random.default_rng(0).random((PROBE_BATCH, size, size, 3), dtype=np.float32)
    model.setup_training(images, SynthConfig(texture_source="noise"), 0)
    stages = model.stages()
    params = {p.untyped_storage().data_ptr() for net in model.networks().values() for p in net.parameters()}
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    model.train_mode(True)
    activations = 0
    for stage in stages:
        activations = max(activations, _saved_bytes(lambda s=stage: s.step(batch, rng), params))
    probe_weights = sum(p.numel() for net in model.networks().values() for p in net.parameters() if p.requires_grad)
    opt_bytes = sum(
        t.numel() * t.element_size()
        for stage in stages
        for opt in stage.optimizers
        for state in opt.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    )
    per_pixel = math.ceil(activations / (PROBE_BATCH * size * size))
    per_weight = math.ceil(opt_bytes / max(1, probe_weights))
    return weights, per_pixel, per_weight, size


def uses_mixed_precision(config: Any, device: torch.device | str) -> bool:
    """Whether training `config` on `device` runs under 16-bit autocast (see recon_core.precision)."""
    from recon_core.precision import autocast_dtype

    return autocast_dtype(config, torch.device(device)) is not None


def estimate(model_name: str, config: Any, device: torch.device | str = "cpu") -> MemoryEstimate:
    """Memory a training run of `model_name` with `config` needs on `device` (see the module docstring)."""
    config_json = json.dumps(dataclasses.asdict(config), sort_keys=True)
    weights, per_pixel, per_weight, _ = _probe(model_name, config_json)
    device = torch.device(device)
    amp = uses_mixed_precision(config, device)
    pixels = int(config.batch_size) * training_side(config) ** 2
    activations = per_pixel * pixels * ACTIVATION_FACTOR * (AMP_ACTIVATION_SHARE if amp else 1.0)
    return MemoryEstimate(
        weights=4 * weights,
        gradients=4 * weights,
        optimizer=per_weight * weights,
        activations=int(activations),
        overhead=CUDA_OVERHEAD_BYTES if device.type == "cuda" else CPU_OVERHEAD_BYTES,
        image_size=training_side(config),
        batch_size=int(config.batch_size),
        mixed_precision=amp,
    )


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory on `device` now (CUDA: free device memory; CPU: MemAvailable); None when unknown (MPS)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(model_name: str, config: Any, device: torch.device | str = "cpu") -> MemoryEstimate | None:
    """The estimate, or ConfigError when it cannot fit in the free memory of `device` (saying what would). None when
    the probe itself fails: the run then goes ahead and its own checks say what is wrong."""
    est = try_estimate(model_name, config, device)
    if est is None:
        return None
    free = available_bytes(device)
    if free is not None and est.total > SAFETY * free:
        fixed = est.weights + est.gradients + est.optimizer + est.overhead
        per_image = max(1, est.activations // max(1, est.batch_size))
        fits = int((SAFETY * free - fixed) // per_image)
        hint = (
            f"batch size {fits} would fit at this size"
            if fits >= 1
            else "even batch size 1 does not fit at this size: use a smaller image size or preset"
        )
        raise ConfigError(
            f"{model_name}: training needs {est.describe()}, but {torch.device(device)} has "
            f"{free / GB:.1f} GB free; {hint}"
        )
    return est


def try_estimate(model_name: str, config: Any, device: torch.device | str = "cpu") -> MemoryEstimate | None:
    """estimate() for display: None when the probe itself fails (the run's own checks will say why)."""
    try:
        return estimate(model_name, config, device)
    except (ReconError, RuntimeError, ValueError) as exc:
        log.warning("memory estimate for %s failed: %s", model_name, exc)
        return None


def preset_summary(model_name: str, preset: str | None, device: str = "auto") -> tuple[str, bool] | None:
    """For the Train page: (what a preset's training needs and what `device` has free now, whether it fits); None
    when either is unknown."""
    from recon_core.device import resolve_device
    from recon_core.models import get_model_class

    try:
        where = resolve_device(device)
        config = get_model_class(model_name).config_from_preset(preset)
    except ReconError:
        return None
    est = try_estimate(model_name, config, where)
    if est is None:
        return None
    free = available_bytes(where)
    fits = free is None or est.total <= SAFETY * free
    room = "" if free is None else f"; {where.type} has {free / GB:.1f} GB free now"
    advice = "" if fits else ": it will not fit, choose a smaller preset or another device"
    return f"Memory: needs {est.describe()}{room}{advice}", fits


__all__ = [
    "MemoryEstimate",
    "available_bytes",
    "check_fits",
    "estimate",
    "preset_summary",
    "try_estimate",
    "uses_mixed_precision",
]
