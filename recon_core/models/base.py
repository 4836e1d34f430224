"""The one small interface every model implements, so the app, CLI, jobs and benchmark treat them alike.

A model owns its networks, losses and scoring. Training is driven by `recon_core.train.fit`, which asks the
model for its `stages()` (one or more phases, each a step function with its optimizers and a share of the
budget) and handles budgets, the lr schedule, progress, checkpoints, cancel and resume in one place.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from recon_core.config import from_dict, to_dict
from recon_core.errors import ConfigError
from recon_core.stage_plan import check_replay


@dataclass
class Budget:
    """How long to train: a number of iterations, or a wall-clock limit in minutes (each stage calibrated at its
    start on its own iterations, see train.py), or a replay: `stage_iterations`, the per-stage plan a run recorded
    (TrainSummary.stage_iterations, metrics.json), with `iterations` optionally where that run stopped. A minutes run
    plans its stages on time, so its total split by weight is another schedule; the plan replays it exactly."""

    iterations: int | None = None
    minutes: float | None = None
    stage_iterations: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.stage_iterations is not None:
            check_replay(self.stage_iterations, self.iterations, self.minutes, "budget")
            return
        if (self.iterations is None) == (self.minutes is None):
            raise ConfigError("budget: give exactly one of iterations or minutes")
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError("budget: iterations must be at least 1")
        if self.minutes is not None and not 0 < self.minutes < math.inf:  # also NaN, which compares False
            raise ConfigError(f"budget: minutes must be a positive number, got {self.minutes}")


@dataclass
class Progress:
    """One progress report, emitted every few iterations and at the end of each stage."""

    stage: str
    iteration: int  # global, across stages, 1-based
    total_iterations: int
    losses: dict[str, float]
    images_per_s: float
    elapsed_s: float
    eta_s: float
    lr: float


ProgressFn = Callable[[Progress], None]


@dataclass
class TrainingStage:
    """A phase of training. `step(images, rng)` runs one optimisation step on a batch of clean good images
    (B, 3, H, W) in [0, 1] on the model's device and returns its loss terms (floats, including "total")."""

    name: str
    weight: float  # share of the budget: of the iterations, or of the time left when it starts (minutes budget)
    step: Callable[[torch.Tensor, np.random.Generator], dict[str, float]]
    optimizers: list[torch.optim.Optimizer]
    lr_drops: tuple[float, ...] = (0.8, 0.9)  # fractions of the stage where lr is multiplied by 0.1
    # Optional batch synthesis run ahead of the step in data workers (recon_core/pipeline.py): picklable,
    # (clean images (B, H, W, 3) float32, rng) -> {name: array}. With it, `step` gets a dict of tensors on the
    # device, {"images": (B, 3, H, W), **those}, instead of the image tensor.
    synth: Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]] | None = None


@dataclass
class Prediction:
    """Scores for a batch: image_scores (N,) higher = more anomalous; maps (N, H, W) at model resolution."""

    image_scores: np.ndarray
    maps: np.ndarray


@dataclass
class ModelConfig:
    """Fields every model config has; each model subclasses it with its own."""

    image_size: int = 256
    batch_size: int = 8
    lr: float = 1e-4
    # training speed on accelerators (recon_core/precision.py); the GPU presets turn them on
    precision: Literal["fp32", "auto", "bf16", "fp16"] = "fp32"
    channels_last: bool = False  # NHWC memory format (faster convolutions on tensor cores and some CPUs)
    cudnn_benchmark: bool = False


def _bound(lo: float, hi: float, help: str) -> Any:
    from recon_core.knobs import Knob

    return Knob(help, lo=lo, hi=hi)


_WIDTH = (1, 1024, "channels")
_DEPTH = (1, 12, "blocks / levels")
_WEIGHT = (0.0, 1e4, "loss weight")
_SHARE = (0.0, 1.0, "a share in [0, 1]")
# The allowed range of every model setting, by name (a name means the same in every model), checked at submit and
# when a model is built (check_settings). A model config may declare its own range on a field instead, with
# recon_core.knobs.knob(...); that declaration wins. tests/test_model_bounds.py requires a range for every numeric
# setting of every registered model, so a new setting cannot go unbounded. Memory need is checked separately
# (recon_core.memory.check_fits) because it depends on several settings together and on the device.
SETTING_BOUNDS: dict[str, Any] = {
    "image_size": _bound(8, 2048, "pixels per side"),
    "batch_size": _bound(1, 1024, "images per step"),
    "lr": _bound(0.0, 1.0, "learning rate"),  # a diverging lr inside the range: the NaN check says so
    "vq_lr": _bound(0.0, 1.0, "learning rate"),
    "train_crop": _bound(0, 2048, "crop side (0 = off)"),
    "score_pool": _bound(0, 512, "pooling window"),
    "map_sigma": _bound(0.0, 64.0, "blur sigma"),
    "focal_gamma": _bound(0.0, 10.0, "focal loss gamma"),
    "latent_dim": _bound(0, 4096, "latent size"),
    "res_blocks": _bound(0, 16, "residual blocks"),
    "codebook_size": _bound(2, 65536, "codes"),
    "codebook_decay": _bound(0.0, 1.0, "EMA decay"),
    "commitment": _bound(0.0, 100.0, "commitment weight"),
    "dead_code_threshold": _bound(0.0, 1e6, "EMA assignments"),
    "vq_updates_per_iteration": _bound(1, 100, "updates"),
    "detector_downscale": _bound(1, 16, "downscale factor"),
    "topk_fraction": _bound(0.0, 1.0, "share of pixels"),
    "weight_decay": _bound(0.0, 1.0, "weight decay"),
    "beta1": _bound(0.0, 1.0, "Adam beta1"),
    "reinit_d_below": _bound(0.0, 1e3, "loss level"),
    "labelled_margin": _bound(0.0, 1e3, "margin factor"),
    "labelled_batch": _bound(1, 1024, "images per step"),
    "ridge": _bound(0.0, 1e3, "ridge"),
    **{
        name: _bound(*_WIDTH)
        for name in (
            "recon_width",
            "disc_width",
            "hidden",
            "res_hidden",
            "embedding_dim",
            "subspace_width",
            "decoder_width",
            "detector_width",
            "upsampler_width",
            "base_width",
            "max_width",
            "width",
            "disc_hidden",
        )
    },
    **{name: _bound(*_DEPTH) for name in ("recon_depth", "disc_depth", "depth", "blocks", "detector_depth")},
    **{
        name: _bound(*_WEIGHT)
        for name in (
            "sspcab_weight",
            "image_loss_weight",
            "vq_weight",
            "dsr_weight",
            "upsampling_weight",
            "w_adv",
            "w_con",
            "w_enc",
            "w_rec",
            "w_labelled",
        )
    },
    **{
        name: _bound(*_SHARE)
        for name in ("vq_defect_share", "anomaly_probability", "strength_min", "strength_max", "labelled_quantile")
    },
}


def setting_bounds(config_class: type) -> dict[str, Any]:
    """{field: Knob} for the numeric settings of a model config: the field's own knob, else SETTING_BOUNDS."""
    import typing

    from recon_core.knobs import META_KEY

    hints = typing.get_type_hints(config_class)
    out = {}
    for f in dataclasses.fields(config_class):
        if hints[f.name] in (int, float) and (f.metadata.get(META_KEY) or f.name in SETTING_BOUNDS):
            out[f.name] = f.metadata.get(META_KEY) or SETTING_BOUNDS[f.name]
    return out


def check_settings(config: ModelConfig, where: str) -> None:
    """Every numeric setting within its declared range (ConfigError naming it): refused at submit, not in the worker
    (`image_size=1000000` used to fail there trying to allocate terabytes)."""
    for name, k in setting_bounds(type(config)).items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where}.{name}: expected a finite number, got {value!r}")
        if not k.lo <= value <= k.hi:
            raise ConfigError(f"{where}.{name}: {value!r} is outside the allowed range {k.lo:g}–{k.hi:g} ({k.help})")


# what GPU presets add: bf16 autocast (fp16 + gradient scaling on GPUs without bf16), NHWC, cuDNN autotuning;
# on a CPU cuDNN settings do nothing and "auto" precision is bf16 only where the CPU has AMX (recon_core/precision.py)
GPU_SPEED: dict[str, Any] = {"precision": "auto", "channels_last": True, "cudnn_benchmark": True}


class AnomalyModel(ABC):
    """Base class. Subclasses set `name`, `config_class`, `presets` and implement the abstract methods."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    presets: ClassVar[dict[str, dict[str, Any]]]  # preset name -> config overrides ("cpu", "gpu", "paper", ...)
    default_preset: ClassVar[str] = "cpu"
    description: ClassVar[str] = ""
    preset_notes: ClassVar[dict[str, str]] = {}  # preset name -> what it is for (Train page, `presets` command)
    uses_labelled_defects: ClassVar[bool] = False  # True if fit can take a few real defect images
    supports_grad_scaling: ClassVar[bool] = False  # True if its steps go through optimizer_step (fp16 training)

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.synth_config: Any = None  # the SynthConfig used for training, set by setup_training
        self.grad_scaler: torch.amp.GradScaler | None = None  # set by train.fit for fp16 training
        self.normaliser: Any = None  # normalisation.MapNormaliser fitted after training, or None (raw scores)

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def config_from_preset(cls, preset: str | None = None, **overrides: Any) -> ModelConfig:
        preset = preset or cls.default_preset
        if preset not in cls.presets:
            raise ConfigError(f"{cls.name}: unknown preset {preset!r}; choose from {sorted(cls.presets)}")
        values = {**cls.presets[preset], **{k: v for k, v in overrides.items() if v is not None}}
        config = from_dict(cls.config_class, values, where=f"{cls.name} config")
        check_settings(config, f"{cls.name} config")
        return config

    @classmethod
    def suggested_budget(cls, preset: str | None = None) -> dict[str, float]:
        """{"minutes": m} or {"iterations": n}: what the preset was chosen for; {} when it suggests none."""
        return dict(getattr(cls, "preset_budgets", {}).get(preset or cls.default_preset) or {})

    @classmethod
    def describe_preset(cls, preset: str | None = None) -> str:
        """What a preset is for and its suggested budget, in one line (Train page, `presets` command)."""
        preset = preset or cls.default_preset
        budget = cls.suggested_budget(preset)
        parts = [cls.preset_notes.get(preset, "")]
        if "minutes" in budget:
            parts.append(f"Suggested budget: {budget['minutes']:g} min.")
        elif "iterations" in budget:
            parts.append(f"Suggested budget: {int(budget['iterations'])} iterations.")
        return " ".join(p for p in parts if p)

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.config)

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every nn.Module whose weights are saved, by a stable name."""

    # ---- training ----------------------------------------------------------------------------------------
    @abstractmethod
    def setup_training(self, train_images: np.ndarray, synth_config: Any, seed: int) -> None:
        """Prepare for training on (N, H, W, 3) float32 images in [0, 1] at config.image_size: build the
        defect generator, optimizers, anything data-dependent. Called once before `stages()` (also on resume)."""

    def set_labelled_defects(self, images: np.ndarray, masks: np.ndarray | None = None) -> None:
        """Give a handful of real defect images (N, H, W, 3) before setup_training; models that cannot use
        them refuse clearly rather than ignore them."""
        raise ConfigError(f"model {self.name!r} does not use labelled defect images")

    @abstractmethod
    def stages(self) -> list[TrainingStage]:
        """The training phases in order; valid after setup_training."""

    def optimizer_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """zero_grad, backward, step; through the gradient scaler when fit set one (fp16)."""
        optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.grad_scaler.scale(loss).backward()
        self.grad_scaler.step(optimizer)
        self.grad_scaler.update()

    def finish_training(self, train_images: np.ndarray) -> None:  # noqa: B027 - optional hook
        """After the last step: compute statistics needed for scoring (e.g. latent mean/covariance)."""

    # ---- inference ---------------------------------------------------------------------------------------
    @abstractmethod
    def predict(self, images: np.ndarray, batch_size: int = 8) -> Prediction:
        """Score (N, H, W, 3) float32 images in [0, 1] at config.image_size."""

    def score(self, images: np.ndarray, batch_size: int = 8) -> Prediction:
        """What every caller scores with: `predict`, then the map normalisation chosen after training (if any)."""
        pred = self.predict(images, batch_size=batch_size)
        if self.normaliser is None:
            return pred
        scores, maps = self.normaliser.apply(pred.maps)
        return Prediction(image_scores=scores, maps=maps)

    def scoring_module(self) -> nn.Module:
        """`onnx_module` with the map normalisation inside the graph: what the ONNX export contains."""
        module = self.onnx_module()
        return module if self.normaliser is None else self.normaliser.wrap(module)

    def onnx_module(self) -> nn.Module:
        """Optional, for ONNX export: the scoring path as one nn.Module in eval mode taking (B, 3, H, W) float in
        [0, 1] (RGB, no normalisation) and returning (image_scores (B,), anomaly_maps (B, H, W))."""
        raise ConfigError(f"model {self.name!r}: export not supported (it has no ONNX scoring module)")

    # ---- persistence -------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """Non-network state needed for scoring (tensors, numbers, strings, lists, dicts only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Inverse of extra_state."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {name: net.state_dict() for name, net in self.networks().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        nets = self.networks()
        saved = state.get("networks", {})
        missing = sorted(set(nets) - set(saved))
        if missing:
            raise ConfigError(f"{self.name}: saved state lacks networks {missing}")
        for name, net in nets.items():
            net.load_state_dict(saved[name])
        self.load_extra_state(state.get("extra", {}))

    def train_mode(self, training: bool) -> None:
        for net in self.networks().values():
            net.train(training)

    def parameter_count(self) -> int:
        return sum(p.numel() for net in self.networks().values() for p in net.parameters())

    def to(self, device: torch.device | str) -> AnomalyModel:
        self.device = torch.device(device)
        for net in self.networks().values():
            net.to(self.device)
        return self


def replace_config(config: ModelConfig, **changes: Any) -> ModelConfig:
    return dataclasses.replace(config, **changes)


__all__ = [
    "GPU_SPEED",
    "AnomalyModel",
    "Budget",
    "ModelConfig",
    "Prediction",
    "Progress",
    "ProgressFn",
    "TrainingStage",
    "field",
    "replace_config",
]
