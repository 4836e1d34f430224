"""Convolutional autoencoder baseline: reconstruct good images, flag what it cannot reconstruct.

Anomaly map = per-pixel reconstruction error (squared error, or 1 − SSIM when trained with the SSIM loss;
SSIM from the shared layers module), smoothed with a Gaussian; image score = max or top-k mean of the map.
The small helpers at the top (tensor conversion, blur, map -> score, batching) are shared by the GANomaly and
AAE baselines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recon_core.errors import ConfigError
from recon_core.models.base import AnomalyModel, ModelConfig, Prediction, TrainingStage
from recon_core.models.layers import images_to_tensor, ssim_map

# ---------------------------------------------------------------------------------------------------------
# shared helpers for the baselines
# ---------------------------------------------------------------------------------------------------------


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, max(1, batch_size)):
        yield slice(start, min(n, start + batch_size))


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with reflect padding; sigma in pixels (<= 0: no blur)."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)  # reflect padding needs pad < size
    coords = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def map_scores(maps: torch.Tensor, mode: str, topk_fraction: float) -> torch.Tensor:
    """Image score from (B, H, W) maps: 'max', or 'topk' = mean of the highest topk_fraction of pixels."""
    flat = maps.flatten(1)
    if mode == "max":
        return flat.max(dim=1).values
    k = max(1, round(topk_fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def check_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")


def check_power_of_two(where: str, size: int, minimum: int) -> None:
    if size < minimum or size & (size - 1):
        raise ConfigError(f"{where}: image_size {size} must be a power of two >= {minimum}")


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation (N(0, 0.02) convs, N(1, 0.02) norms): what GANomaly and most AAEs use."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------------
# the autoencoder
# ---------------------------------------------------------------------------------------------------------

LOSSES = ("mse", "mse_l1", "ssim")
SCORE_MODES = ("max", "topk")


@dataclass
class AutoEncoderConfig(ModelConfig):
    image_size: int = 128
    batch_size: int = 8
    lr: float = 5e-4
    base_width: int = 16  # channels of the first block, doubled per block up to max_width
    max_width: int = 128
    depth: int = 5  # stride-2 blocks; the spatial bottleneck is image_size / 2**depth
    latent_dim: int = 128  # size of the dense bottleneck vector (0 = purely convolutional bottleneck)
    loss: str = "mse"  # mse | mse_l1 | ssim
    map_sigma: float = 2.0  # Gaussian blur of the error map, pixels at model resolution
    score: str = "topk"  # max | topk
    topk_fraction: float = 0.01  # share of pixels averaged for score="topk"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_choice("autoencoder loss", self.loss, LOSSES)
        check_choice("autoencoder score", self.score, SCORE_MODES)
        # depth is compared before 2**depth is computed: a hostile depth (2**70) would exhaust memory
        if self.depth < 1 or self.depth >= max(1, self.image_size).bit_length() or self.image_size % (2**self.depth):
            raise ConfigError(f"autoencoder: image_size {self.image_size} must be divisible by 2**depth ({self.depth})")
        if self.image_size // 2**self.depth < 1 or self.latent_dim < 0 or self.base_width < 1:
            raise ConfigError("autoencoder: depth, latent_dim and base_width must be positive")
        if not 0 < self.topk_fraction <= 1:
            raise ConfigError("autoencoder topk_fraction must be in (0, 1]")


class ConvAutoEncoder(nn.Module):
    """Strided conv encoder -> (dense) bottleneck -> transposed-conv decoder, no skip connections (skips
    would let the network copy defects straight through)."""

    def __init__(self, cfg: AutoEncoderConfig) -> None:
        super().__init__()
        widths = [min(cfg.base_width * 2**i, cfg.max_width) for i in range(cfg.depth)]
        enc: list[nn.Module] = []
        in_ch = 3
        for w in widths:
            enc += [nn.Conv2d(in_ch, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)]
            in_ch = w
        self.encoder = nn.Sequential(*enc)
        side = cfg.image_size // 2**cfg.depth
        self.shape = (widths[-1], side, side)
        flat = widths[-1] * side * side
        if cfg.latent_dim > 0:
            self.to_latent: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(flat, cfg.latent_dim))
            self.from_latent: nn.Module = nn.Sequential(
                nn.Linear(cfg.latent_dim, flat), nn.Unflatten(1, self.shape), nn.LeakyReLU(0.2, inplace=True)
            )
        else:
            self.to_latent = nn.Identity()
            self.from_latent = nn.Identity()
        dec: list[nn.Module] = []
        rev = widths[::-1]
        for w_in, w_out in zip(rev, [*rev[1:], cfg.base_width], strict=True):
            dec += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(inplace=True)]
        dec += [nn.Conv2d(cfg.base_width, 3, 3, 1, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(self.to_latent(self.encoder(x))))


class AutoEncoder(AnomalyModel):
    name: ClassVar[str] = "autoencoder"
    config_class: ClassVar[type[ModelConfig]] = AutoEncoderConfig
    description: ClassVar[str] = (
        "Convolutional autoencoder baseline: anomaly map = smoothed reconstruction error. Fast, simple, "
        "tends to reconstruct defects too (weak on subtle ones)."
    )
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU: 128 px, 1.4M parameters, ~0.09 s per batch of 8 on 2 idle cores
        "cpu": {"image_size": 128, "base_width": 16, "max_width": 128, "depth": 5, "latent_dim": 128, "batch_size": 8},
        # SSIM autoencoder in the spirit of Bergmann et al. 2019 (128 px, latent 100, SSIM loss)
        "paper": {
            "image_size": 128,
            "base_width": 32,
            "max_width": 128,
            "depth": 5,
            "latent_dim": 100,
            "loss": "ssim",
            "batch_size": 16,
            "lr": 2e-4,
        },
        "gpu": {
            "image_size": 256,
            "base_width": 64,
            "max_width": 512,
            "depth": 6,
            "latent_dim": 256,
            "batch_size": 16,
            "map_sigma": 4.0,
            "lr": 2e-4,
        },
    }
    preset_notes: ClassVar[dict[str, str]] = {
        "cpu": "128 px, 1.4M parameters, MSE loss: a quick baseline (about a minute and a half on a 2-core CPU).",
        "paper": "SSIM autoencoder in the spirit of Bergmann et al. 2019 (128 px, latent 100, SSIM loss).",
        "gpu": "256 px, wider and deeper: for a GPU.",
    }
    # used when a run gives no budget (the benchmark always gives one)
    preset_budgets: ClassVar[dict[str, dict[str, float]]] = {
        "cpu": {"minutes": 1.5},
        "paper": {"iterations": 20000},
        "gpu": {"iterations": 10000},
    }

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.cfg: AutoEncoderConfig = config  # type: ignore[assignment]
        self.net = ConvAutoEncoder(self.cfg).to(self.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.train_score_stats: dict[str, float] = {}

    def networks(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.net}

    # ---- training ----------------------------------------------------------------------------------------
    def setup_training(self, train_images: np.ndarray, synth_config: Any, seed: int) -> None:
        self.synth_config = synth_config  # not used: the autoencoder trains on good images only
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def reconstruction_loss(self, recon: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cfg.loss == "ssim":
            ssim = 1 - ssim_map(recon, x).mean()
            return {"ssim": ssim, "total": ssim}
        mse = F.mse_loss(recon, x)
        if self.cfg.loss == "mse_l1":
            l1 = F.l1_loss(recon, x)
            return {"mse": mse, "l1": l1, "total": mse + l1}
        return {"mse": mse, "total": mse}

    def _step(self, images: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        assert self.optimizer is not None, "setup_training must run before stages()"
        self.net.train()
        losses = self.reconstruction_loss(self.net(images), images)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def stages(self) -> list[TrainingStage]:
        assert self.optimizer is not None, "setup_training must run before stages()"
        return [TrainingStage("reconstruction", 1.0, self._step, [self.optimizer])]

    def finish_training(self, train_images: np.ndarray) -> None:
        # training-image score statistics, kept for reference (a threshold is picked elsewhere)
        scores = self.predict(train_images).image_scores
        self.train_score_stats = {"mean": float(scores.mean()), "std": float(scores.std()), "max": float(scores.max())}

    # ---- inference ---------------------------------------------------------------------------------------
    def error_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        raw = 1 - ssim_map(recon, x) if self.cfg.loss == "ssim" else ((recon - x) ** 2).mean(dim=1)
        return gaussian_blur(raw, self.cfg.map_sigma)

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 8) -> Prediction:
        self.net.eval()
        scores, maps = [], []
        for sl in batches(len(images), batch_size):
            x = images_to_tensor(images[sl], self.cfg.image_size, self.device)
            amap = self.error_map(x, self.net(x))
            maps.append(amap.cpu())
            scores.append(map_scores(amap, self.cfg.score, self.cfg.topk_fraction).cpu())
        return Prediction(image_scores=torch.cat(scores).numpy(), maps=torch.cat(maps).numpy().astype(np.float32))

    def onnx_module(self) -> nn.Module:
        """(B, 3, H, W) -> (scores (B,), maps (B, H, W)); for ONNX export."""
        return _AutoEncoderScorer(self)

    # ---- persistence -------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"train_score_stats": dict(self.train_score_stats)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.train_score_stats = dict(state.get("train_score_stats", {}))


class _AutoEncoderScorer(nn.Module):
    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.net = model.net
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.model.error_map(x, self.net(x))
        return map_scores(amap, self.model.cfg.score, self.model.cfg.topk_fraction), amap
