"""Adversarial autoencoder + Hotelling's T² (Goto, Kato, Saito, Aizawa, J. Electron. Imaging 29(4), 2020).

Encoder -> low-dimensional latent z (12 dims) -> decoder, trained with a reconstruction loss; a small
discriminator on z pushes the aggregate posterior q(z) towards N(0, I) (Makhzani et al. 2015). Anomaly
score = Hotelling's T² of z, (z − μ)ᵀ Σ⁻¹ (z − μ), with μ and a shrinkage-regularised Σ estimated on the
training normals' latents in finish_training. The anomaly map (secondary) is the smoothed reconstruction error.

Labelled defects (the report's key idea: ~0.5% anomalous training samples sharpen the boundary) are used
explicitly, in the spirit of Deep SAD: with r² the χ²_d quantile `labelled_quantile` (the sphere that holds
that share of N(0, I)), a hinge pushes the labelled defects' latents beyond ‖z‖² = labelled_margin · r² and a
second hinge keeps the good images' latents inside ‖z‖² = r² (which the N(0, I) prior asks for anyway; without
it the encoder simply scales every latent up). Labelled defects are never reconstructed and never shown to
the discriminator, so the normal model stays a model of normals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import chi2
from torch import nn

from recon_core.errors import ConfigError
from recon_core.models.autoencoder import (
    batches,
    check_choice,
    check_power_of_two,
    dcgan_init,
    gaussian_blur,
)
from recon_core.models.base import AnomalyModel, ModelConfig, Prediction, TrainingStage
from recon_core.models.layers import images_to_tensor

COVARIANCES = ("ledoit_wolf", "ridge")


@dataclass
class AAEConfig(ModelConfig):
    image_size: int = 32  # the report found 32x32 best (fewer parameters generalised better)
    batch_size: int = 16
    lr: float = 5e-4
    beta1: float = 0.5
    latent_dim: int = 12
    blocks: int = 3  # stride-2 conv blocks (the report's best: 3)
    width: int = 32  # channels of the first block, doubled per block
    disc_hidden: int = 128  # units of the latent discriminator's two hidden layers
    w_rec: float = 1.0
    w_adv: float = 0.05  # weight of "fool the latent discriminator" against the reconstruction loss
    w_labelled: float = 1.0  # weight of the labelled-defect hinge loss
    labelled_quantile: float = 0.99  # r² = chi2.ppf(q, latent_dim): goods are kept inside it ...
    labelled_margin: float = 2.0  # ... and labelled defects pushed beyond labelled_margin · r²
    labelled_batch: int = 8  # labelled defects per step (all of them when fewer)
    covariance: str = "ledoit_wolf"  # ledoit_wolf | ridge (Σ + ridge · mean variance · I)
    ridge: float = 0.05
    map_sigma: float = 1.0

    def __post_init__(self) -> None:
        check_power_of_two("aae", self.image_size, 8)
        check_choice("aae covariance", self.covariance, COVARIANCES)
        if self.latent_dim < 1 or self.width < 1 or self.blocks < 1:  # first: 2**-2000 would divide by zero below
            raise ConfigError("aae: latent_dim, width and blocks must be positive")
        if self.blocks >= self.image_size.bit_length() or self.image_size // 2**self.blocks < 1:  # never 2**(2**70)
            raise ConfigError(f"aae: {self.blocks} blocks are too many for image_size {self.image_size}")
        if not 0 < self.labelled_quantile < 1:
            raise ConfigError("aae labelled_quantile must be in (0, 1)")
        if self.labelled_margin < 1:
            raise ConfigError("aae labelled_margin must be at least 1")


class AAEEncoder(nn.Module):
    """No batch norm: labelled defects pass through the encoder separately and must not shift the statistics
    used for scoring (and at 32 px it is not needed)."""

    def __init__(self, cfg: AAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for i in range(cfg.blocks):
            w = cfg.width * 2**i
            layers += [nn.Conv2d(ch, w, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            ch = w
        side = cfg.image_size // 2**cfg.blocks
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(ch * side * side, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class AAEDecoder(nn.Module):
    def __init__(self, cfg: AAEConfig) -> None:
        super().__init__()
        ch = cfg.width * 2 ** (cfg.blocks - 1)
        side = cfg.image_size // 2**cfg.blocks
        layers: list[nn.Module] = [
            nn.Linear(cfg.latent_dim, ch * side * side),
            nn.Unflatten(1, (ch, side, side)),
            nn.ReLU(inplace=True),
        ]
        for i in range(cfg.blocks - 1, 0, -1):
            w = cfg.width * 2 ** (i - 1)
            layers += [nn.ConvTranspose2d(ch, w, 4, 2, 1), nn.ReLU(inplace=True)]
            ch = w
        layers += [nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class LatentDiscriminator(nn.Module):
    """MLP on z. Each sample also sees its batch's per-dimension standard deviation ("minibatch std", Karras et
    al. 2018): without it, on a few dozen images the encoder escapes D by collapsing every latent onto one moving
    point (D loss stuck at ln 2, latent spread ~0.01) instead of spreading them like N(0, I)."""

    def __init__(self, cfg: AAEConfig) -> None:
        super().__init__()
        h = cfg.disc_hidden
        self.net = nn.Sequential(
            nn.Linear(2 * cfg.latent_dim, h), nn.LeakyReLU(0.2, True), nn.Linear(h, h), nn.LeakyReLU(0.2, True)
        )
        self.out = nn.Linear(h, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        spread = z.std(dim=0, keepdim=True) if len(z) > 1 else torch.ones_like(z)
        return self.out(self.net(torch.cat([z, spread.expand_as(z)], dim=1))).flatten()


def hotelling_t2(z: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(z − μ)ᵀ Σ⁻¹ (z − μ) per row."""
    d = z - mean
    return np.einsum("ni,ij,nj->n", d, precision, d)


def regularised_covariance(z: np.ndarray, method: str, ridge: float) -> np.ndarray:
    """Σ of the training latents, shrunk so a handful of images (20 shots, 12 dims) gives a usable inverse."""
    if method == "ledoit_wolf":
        from sklearn.covariance import LedoitWolf

        cov = LedoitWolf().fit(z).covariance_
        if np.linalg.matrix_rank(cov) == cov.shape[0]:
            return cov
        # no spread to shrink towards (identical training images: duplicates, a blank camera): singular, so
        # use the ridge estimate below, which is always invertible
        ridge = ridge if ridge > 0 else 0.05
    cov = np.cov(z, rowvar=False, bias=False) if len(z) > 1 else np.zeros((z.shape[1], z.shape[1]))
    scale = float(np.trace(cov) / cov.shape[0]) if np.trace(cov) > 0 else 1.0
    return cov + ridge * scale * np.eye(cov.shape[0])


class AdversarialAutoEncoder(AnomalyModel):
    name: ClassVar[str] = "aae"
    config_class: ClassVar[type[ModelConfig]] = AAEConfig
    description: ClassVar[str] = (
        "Adversarial autoencoder with a N(0, I) latent and Hotelling's T² score (Goto, Kato et al. 2020). "
        "Small (32 px); can use a few labelled defect images to push defects outward."
    )
    uses_labelled_defects: ClassVar[bool] = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {"image_size": 32, "blocks": 3, "width": 32, "latent_dim": 12, "batch_size": 16},
        # the report's best setting: 32x32 input, 3 conv blocks, 12-dim bottleneck
        "paper": {"image_size": 32, "blocks": 3, "width": 64, "latent_dim": 12, "batch_size": 32, "lr": 2e-4},
        "gpu": {"image_size": 64, "blocks": 4, "width": 64, "latent_dim": 12, "batch_size": 32, "lr": 2e-4},
    }
    preset_notes: ClassVar[dict[str, str]] = {
        "cpu": "32 px, 12-dim Gaussian latent: about a minute on a 2-core CPU.",
        "paper": "The source report's best setting: 32 px, 3 blocks, 12-dim bottleneck, wider.",
        "gpu": "64 px, 4 blocks: for a GPU.",
    }
    # used when a run gives no budget (the benchmark always gives one)
    preset_budgets: ClassVar[dict[str, dict[str, float]]] = {
        "cpu": {"minutes": 1.0},
        "paper": {"iterations": 10000},
        "gpu": {"iterations": 10000},
    }

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.cfg: AAEConfig = config  # type: ignore[assignment]
        self.encoder = AAEEncoder(self.cfg)
        self.decoder = AAEDecoder(self.cfg)
        self.discriminator = LatentDiscriminator(self.cfg)
        for net in (self.encoder, self.decoder, self.discriminator):
            dcgan_init(net)
        self.to(self.device)
        self.opt_ae: torch.optim.Optimizer | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        self.labelled: torch.Tensor | None = None  # (N, 3, S, S) labelled defect images, if any
        self.latent_mean = np.zeros(self.cfg.latent_dim)
        self.latent_cov = np.eye(self.cfg.latent_dim)
        self.latent_precision = np.eye(self.cfg.latent_dim)
        self.n_labelled_used = 0

    def networks(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.decoder, "discriminator": self.discriminator}

    @property
    def labelled_radius2(self) -> float:
        return float(chi2.ppf(self.cfg.labelled_quantile, self.cfg.latent_dim))

    # ---- training ----------------------------------------------------------------------------------------
    def set_labelled_defects(self, images: np.ndarray, masks: np.ndarray | None = None) -> None:
        """Keep a few real defect images; training pushes their latents outside the χ² radius."""
        if images is None or len(images) == 0:
            self.labelled = None
            self.n_labelled_used = 0
            return
        self.labelled = images_to_tensor(np.asarray(images), self.cfg.image_size, self.device)
        self.n_labelled_used = len(images)

    def setup_training(self, train_images: np.ndarray, synth_config: Any, seed: int) -> None:
        self.synth_config = synth_config  # not used: trains on good images (+ optional labelled defects)
        betas = (self.cfg.beta1, 0.999)
        self.opt_ae = torch.optim.Adam(
            [*self.encoder.parameters(), *self.decoder.parameters()], lr=self.cfg.lr, betas=betas
        )
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr, betas=betas)

    def _labelled_loss(self, z_good: torch.Tensor, rng: np.random.Generator) -> torch.Tensor | None:
        if self.labelled is None or self.cfg.w_labelled <= 0:
            return None
        n = len(self.labelled)
        idx = rng.choice(n, size=min(n, self.cfg.labelled_batch), replace=False)
        z_bad = self.encoder(self.labelled[torch.from_numpy(np.sort(idx))])
        r2 = self.labelled_radius2
        # hinges on squared norms, scaled by r² so the weight means the same for any latent size
        outward = F.relu(self.cfg.labelled_margin * r2 - (z_bad**2).sum(dim=1)).mean()
        inward = F.relu((z_good**2).sum(dim=1) - r2).mean()
        return (outward + inward) / r2

    def _step(self, x: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        assert self.opt_ae is not None and self.opt_d is not None, "setup_training must run before stages()"
        cfg = self.cfg
        self.train_mode(True)
        z = self.encoder(x)
        # discriminator: samples of the prior N(0, I) are "real", encoded good images are "fake"
        prior = torch.from_numpy(rng.standard_normal(z.shape).astype(np.float32)).to(self.device)
        logit_prior = self.discriminator(prior)
        logit_post = self.discriminator(z.detach())
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(logit_prior, torch.ones_like(logit_prior))
            + F.binary_cross_entropy_with_logits(logit_post, torch.zeros_like(logit_post))
        )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # autoencoder: reconstruct + make q(z) indistinguishable from the prior (+ push labelled defects out)
        rec = F.mse_loss(self.decoder(z), x)
        self.discriminator.requires_grad_(False)
        logit = self.discriminator(z)
        self.discriminator.requires_grad_(True)
        adv = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
        total = cfg.w_rec * rec + cfg.w_adv * adv
        losses = {"rec": rec.item(), "adv": adv.item(), "d": loss_d.item()}
        labelled = self._labelled_loss(z, rng)
        if labelled is not None:
            total = total + cfg.w_labelled * labelled
            losses["labelled"] = labelled.item()
        self.opt_ae.zero_grad(set_to_none=True)
        total.backward()
        self.opt_ae.step()
        losses["total"] = total.item() + loss_d.item()
        return losses

    def stages(self) -> list[TrainingStage]:
        assert self.opt_ae is not None and self.opt_d is not None, "setup_training must run before stages()"
        return [TrainingStage("adversarial", 1.0, self._step, [self.opt_ae, self.opt_d])]

    def finish_training(self, train_images: np.ndarray) -> None:
        z = self.latents(train_images)
        self.latent_mean = z.mean(axis=0)
        self.latent_cov = regularised_covariance(z, self.cfg.covariance, self.cfg.ridge)
        self.latent_precision = np.linalg.inv(self.latent_cov)

    # ---- inference ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def latents(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        self.train_mode(False)
        out = [
            self.encoder(images_to_tensor(images[sl], self.cfg.image_size, self.device)).cpu()
            for sl in batches(len(images), batch_size)
        ]
        return torch.cat(out).double().numpy()

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 8) -> Prediction:
        self.train_mode(False)
        scores, maps = [], []
        for sl in batches(len(images), batch_size):
            x = images_to_tensor(images[sl], self.cfg.image_size, self.device)
            z = self.encoder(x)
            scores.append(hotelling_t2(z.cpu().double().numpy(), self.latent_mean, self.latent_precision))
            maps.append(gaussian_blur(((self.decoder(z) - x) ** 2).mean(dim=1), self.cfg.map_sigma).cpu())
        return Prediction(
            image_scores=np.concatenate(scores).astype(np.float32),
            maps=torch.cat(maps).numpy().astype(np.float32),
        )

    def onnx_module(self) -> nn.Module:
        """(B, 3, H, W) -> (Hotelling's T² (B,), maps (B, H, W)); for ONNX export."""
        return _AAEScorer(self)

    # ---- persistence -------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {
            "latent_mean": torch.from_numpy(np.asarray(self.latent_mean, dtype=np.float64)),
            "latent_cov": torch.from_numpy(np.asarray(self.latent_cov, dtype=np.float64)),
            "n_labelled_used": self.n_labelled_used,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "latent_mean" in state:
            self.latent_mean = torch.as_tensor(state["latent_mean"]).double().numpy()
            self.latent_cov = torch.as_tensor(state["latent_cov"]).double().numpy()
            self.latent_precision = np.linalg.inv(self.latent_cov)
        self.n_labelled_used = int(state.get("n_labelled_used", 0))


class _AAEScorer(nn.Module):
    def __init__(self, model: AdversarialAutoEncoder) -> None:
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder
        self.sigma = model.cfg.map_sigma
        self.register_buffer("mean", torch.as_tensor(model.latent_mean, dtype=torch.float32))
        self.register_buffer("precision", torch.as_tensor(model.latent_precision, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        d = z - self.mean
        t2 = ((d @ self.precision) * d).sum(dim=1)
        return t2, gaussian_blur(((self.decoder(z) - x) ** 2).mean(dim=1), self.sigma)
