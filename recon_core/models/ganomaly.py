"""GANomaly (Akcay, Atapour-Abarghouei, Breckon, ACCV 2018).

Generator = encoder G_E -> decoder G_D -> second encoder E; discriminator D is a DCGAN encoder.
Generator loss `w_adv·L_adv + w_con·L_con + w_enc·L_enc` with L_adv = L2 between D's intermediate features
of x and x̂ (the original paper; anomalib uses D's outputs), L_con = L1(x, x̂), L_enc = L2(z, ẑ).
D: BCE. Image score = ‖z − ẑ‖₂, standardised with the mean/std of the TRAINING images' scores (computed in
finish_training and saved), never with statistics of the batch being scored. The anomaly map (a secondary
output) is the smoothed reconstruction error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recon_core.errors import ConfigError
from recon_core.models.autoencoder import (
    batches,
    check_power_of_two,
    dcgan_init,
    gaussian_blur,
)
from recon_core.models.base import AnomalyModel, ModelConfig, Prediction, TrainingStage
from recon_core.models.layers import images_to_tensor


@dataclass
class GanomalyConfig(ModelConfig):
    image_size: int = 32
    batch_size: int = 16
    lr: float = 2e-4
    beta1: float = 0.5
    latent_dim: int = 100
    width: int = 32  # channels of the first conv (ngf/ndf), doubled per stride-2 block
    w_adv: float = 1.0
    w_con: float = 50.0
    w_enc: float = 1.0
    map_sigma: float = 1.0  # blur of the secondary reconstruction-error map, pixels at model resolution
    reinit_d_below: float = 1e-5  # re-initialise D when its loss collapses (as the official code does)

    def __post_init__(self) -> None:
        check_power_of_two("ganomaly", self.image_size, 16)
        if self.latent_dim < 1 or self.width < 1:
            raise ConfigError("ganomaly: latent_dim and width must be positive")
        if min(self.w_adv, self.w_con, self.w_enc) < 0:
            raise ConfigError("ganomaly: loss weights must be non-negative")


def _encoder_body(image_size: int, width: int) -> tuple[nn.Sequential, int]:
    """DCGAN encoder down to 4x4; returns the layers and the channel count at 4x4."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    size, ch = image_size // 2, width
    while size > 4:
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, inplace=True)]
        size, ch = size // 2, ch * 2
    return nn.Sequential(*layers), ch


class Encoder(nn.Module):
    def __init__(self, image_size: int, width: int, latent_dim: int) -> None:
        super().__init__()
        self.features, ch = _encoder_body(image_size, width)
        self.head = nn.Conv2d(ch, latent_dim, 4, 1, 0, bias=False)  # 4x4 -> 1x1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Decoder(nn.Module):
    def __init__(self, image_size: int, width: int, latent_dim: int) -> None:
        super().__init__()
        ch = width * (image_size // 8)  # mirrors the encoder: width * 2**(log2(size) - 3) channels at 4x4
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch)]
        layers.append(nn.ReLU(inplace=True))
        size = 4
        while size < image_size // 2:
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            size, ch = size * 2, ch // 2
        layers += [nn.ConvTranspose2d(ch, 3, 4, 2, 1, bias=False), nn.Sigmoid()]  # inputs are in [0, 1]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Generator(nn.Module):
    def __init__(self, cfg: GanomalyConfig) -> None:
        super().__init__()
        self.encoder1 = Encoder(cfg.image_size, cfg.width, cfg.latent_dim)
        self.decoder = Decoder(cfg.image_size, cfg.width, cfg.latent_dim)
        self.encoder2 = Encoder(cfg.image_size, cfg.width, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder1(x)
        x_hat = self.decoder(z)
        return z, x_hat, self.encoder2(x_hat)


class Discriminator(nn.Module):
    def __init__(self, cfg: GanomalyConfig) -> None:
        super().__init__()
        self.features, ch = _encoder_body(cfg.image_size, cfg.width)
        self.classifier = nn.Conv2d(ch, 1, 4, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits (B,), intermediate features (B, C, 4, 4))."""
        feats = self.features(x)
        return self.classifier(feats).flatten(), feats


class Ganomaly(AnomalyModel):
    name: ClassVar[str] = "ganomaly"
    config_class: ClassVar[type[ModelConfig]] = GanomalyConfig
    description: ClassVar[str] = (
        "GANomaly baseline (ACCV 2018): encoder-decoder-encoder GAN, score = latent distance ‖z − ẑ‖. "
        "Image-level only (map = reconstruction error); known to be unstable, compare across seeds."
    )
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # 2-core CPU: the official 32 px input (the score is image-level; the map is a coarse secondary output)
        "cpu": {"image_size": 32, "width": 32, "latent_dim": 100, "batch_size": 16},
        # the official code's defaults: isize 32, nz 100, ngf = ndf = 64, batch 64, lr 2e-4, beta1 0.5
        "paper": {"image_size": 32, "width": 64, "latent_dim": 100, "batch_size": 64},
        "gpu": {"image_size": 128, "width": 64, "latent_dim": 100, "batch_size": 32, "map_sigma": 2.0},
    }
    preset_notes: ClassVar[dict[str, str]] = {
        "cpu": "The official 32 px input: an image-level score; its map is coarse.",
        "paper": "The official code's defaults (32 px, batch 64).",
        "gpu": "128 px, for a GPU: a finer map.",
    }
    # used when a run gives no budget (the benchmark always gives one)
    preset_budgets: ClassVar[dict[str, dict[str, float]]] = {
        "cpu": {"minutes": 1.5},
        "paper": {"iterations": 15000},  # 15 epochs of the official code on a few thousand images
        "gpu": {"iterations": 10000},
    }

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.cfg: GanomalyConfig = config  # type: ignore[assignment]
        self.generator = Generator(self.cfg)
        self.discriminator = Discriminator(self.cfg)
        dcgan_init(self.generator)
        dcgan_init(self.discriminator)
        self.to(self.device)
        self.opt_g: torch.optim.Optimizer | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        # training-set statistics of the raw latent distance, used to standardise scores
        self.score_mean = 0.0
        self.score_std = 1.0
        self.d_reinits = 0

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    # ---- training ----------------------------------------------------------------------------------------
    def setup_training(self, train_images: np.ndarray, synth_config: Any, seed: int) -> None:
        self.synth_config = synth_config  # not used: GANomaly trains on good images only
        betas = (self.cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr, betas=betas)

    def _step(self, x: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        assert self.opt_g is not None and self.opt_d is not None, "setup_training must run before stages()"
        cfg = self.cfg
        self.train_mode(True)
        # generator update; D is frozen so the feature-matching loss only moves G
        z, x_hat, z_hat = self.generator(x)
        self.discriminator.requires_grad_(False)
        _, feat_real = self.discriminator(x)
        _, feat_fake = self.discriminator(x_hat)
        self.discriminator.requires_grad_(True)
        l_adv = F.mse_loss(feat_fake, feat_real.detach())
        l_con = F.l1_loss(x_hat, x)
        l_enc = F.mse_loss(z_hat, z)
        loss_g = cfg.w_adv * l_adv + cfg.w_con * l_con + cfg.w_enc * l_enc
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        # discriminator update: real x vs reconstructed x̂
        logit_real, _ = self.discriminator(x)
        logit_fake, _ = self.discriminator(x_hat.detach())
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
            + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
        )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        if loss_d.item() < cfg.reinit_d_below:  # D won outright: restart it so G keeps getting a signal
            dcgan_init(self.discriminator)
            self.d_reinits += 1
        return {
            "adv": l_adv.item(),
            "con": l_con.item(),
            "enc": l_enc.item(),
            "g": loss_g.item(),
            "d": loss_d.item(),
            "total": loss_g.item() + loss_d.item(),
        }

    def stages(self) -> list[TrainingStage]:
        assert self.opt_g is not None and self.opt_d is not None, "setup_training must run before stages()"
        return [TrainingStage("adversarial", 1.0, self._step, [self.opt_g, self.opt_d])]

    def finish_training(self, train_images: np.ndarray) -> None:
        raw, _ = self._raw(train_images)
        self.score_mean = float(raw.mean())
        self.score_std = float(max(raw.std(), 1e-8))

    # ---- inference ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _raw(self, images: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        self.train_mode(False)
        scores, maps = [], []
        for sl in batches(len(images), batch_size):
            x = images_to_tensor(images[sl], self.cfg.image_size, self.device)
            z, x_hat, z_hat = self.generator(x)
            scores.append((z - z_hat).flatten(1).norm(dim=1).cpu())
            maps.append(gaussian_blur(((x_hat - x) ** 2).mean(dim=1), self.cfg.map_sigma).cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy().astype(np.float32)

    def predict(self, images: np.ndarray, batch_size: int = 8) -> Prediction:
        raw, maps = self._raw(images, batch_size)
        return Prediction(image_scores=((raw - self.score_mean) / self.score_std).astype(np.float32), maps=maps)

    def onnx_module(self) -> nn.Module:
        """(B, 3, H, W) -> (standardised scores (B,), maps (B, H, W)); for ONNX export."""
        return _GanomalyScorer(self)

    # ---- persistence -------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"score_mean": self.score_mean, "score_std": self.score_std, "d_reinits": self.d_reinits}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.score_mean = float(state.get("score_mean", 0.0))
        self.score_std = float(state.get("score_std", 1.0))
        self.d_reinits = int(state.get("d_reinits", 0))


class _GanomalyScorer(nn.Module):
    def __init__(self, model: Ganomaly) -> None:
        super().__init__()
        self.generator = model.generator
        self.sigma = model.cfg.map_sigma
        self.register_buffer("mean", torch.tensor(model.score_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(model.score_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, x_hat, z_hat = self.generator(x)
        raw = (z - z_hat).flatten(1).norm(dim=1)
        return (raw - self.mean) / self.std, gaussian_blur(((x_hat - x) ** 2).mean(dim=1), self.sigma)
