"""DSR (Zavrtanik, Kristan, Skočaj, ECCV 2022) with a VQ-VAE we train ourselves (offline, minutes on a CPU).

Pipeline (SPEC "DSR"; design and measurements in notes/dsr.md):
    image -> two-level VQ-VAE (bottom codes at 1/4, top at 1/8 resolution, EMA codebooks, dead-code restarts)
          -> general decoder: reconstructs what is there (anomalies included)
          -> subspace restriction U-Nets (one per level): project the features onto normal ones
          -> object-specific decoder: the normal appearance
          -> anomaly detection U-Net on (object recon, general recon) -> 2-class mask
          -> upsampling U-Net on (image, object recon, detection softmax) -> full-resolution mask

Training stages (each a TrainingStage; train.fit gives each its weight's share of the budget):
    "vq"         the VQ-VAE on the product's good images (skipped when a frozen pretrained VQ is used)
    "dsr"        feature-space anomalies inside Perlin masks: codes replaced by codebook entries sampled away
                 from the original code; loss MSE(features, both levels) + 10 * MSE(img, object recon) + Focal
    "upsampling" image-space DRAEM defects (synth.DefectGenerator); Focal on the upsampling module only
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recon_core.defect_bank import LabelledDefectsMixin
from recon_core.errors import CheckpointError, ConfigError
from recon_core.models.autoencoder import gaussian_blur
from recon_core.models.base import GPU_SPEED, AnomalyModel, ModelConfig, Prediction, TrainingStage
from recon_core.models.layers import (
    UNet,
    focal_loss,
    freeze_for_inference,
    images_to_tensor,
    mean_pool_max,
    weights_key,
)

VQ_FILE_FORMAT = "recon-dsr-vq"
VQ_FILE_VERSION = 1
# VQ-VAE architecture fields: a pretrained VQ file must match these exactly
VQ_ARCH_FIELDS = ("hidden", "res_blocks", "res_hidden", "embedding_dim", "codebook_size")


def bundled_vq_path() -> Path:
    """The VQ-VAE shipped with the project (trained on procedural textures only; see notes/dsr.md)."""
    return Path(__file__).resolve().parents[2] / "assets" / "vq" / "dsr_vq_textures.pt"


# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DsrConfig(ModelConfig):
    image_size: int = 128
    batch_size: int = 8
    lr: float = 2e-4  # stages "dsr" and "upsampling" (Adam)
    vq_lr: float = 1e-3  # stage "vq" (Adam on encoder/decoder; codebooks move by EMA)
    # VQ-VAE
    hidden: int = 64  # encoder/decoder width
    res_blocks: int = 2
    res_hidden: int = 32
    embedding_dim: int = 64
    codebook_size: int = 256  # entries per level (paper 4096 x 128)
    codebook_decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 1.0  # EMA assignments per step below which a code is restarted
    vq_updates_per_iteration: int = 1  # VQ-stage optimizer steps per training iteration (kept for configs that set
    # it; train.fit now calibrates every stage on its own iterations, so no preset needs more than 1)
    vq_defect_share: float = 0.5  # share of each VQ-stage batch given image-space synthetic defects
    vq_init: str = ""  # "" = train per product; "bundled" = assets/vq; or a path from `pretrain-vq`
    # DSR modules
    subspace_width: int = 64
    decoder_width: int = 64  # object-specific decoder
    detector_width: int = 32
    detector_depth: int = 4
    detector_downscale: int = 2  # the detector sees the reconstructions at 1/this resolution (its targets are
    # feature-level masks at 1/4 resolution anyway; the upsampling module restores full resolution)
    upsampler_width: int = 16
    # feature-space anomalies
    anomaly_probability: float = 0.5  # share of stage-2 samples with an anomaly
    strength_min: float = 0.2  # codes are sampled among the nearest `strength` share of the codebook
    strength_max: float = 1.0  # (minus the nearest 5%); the reference code's value is 0.2
    image_loss_weight: float = 10.0
    focal_gamma: float = 2.0
    # budget shares (train.fit splits an iteration budget by weight; a minutes budget gives each stage its share of
    # the time, calibrated on that stage's own iterations)
    vq_weight: float = 0.3  # 0 = use vq_init frozen, no VQ stage
    dsr_weight: float = 0.55
    upsampling_weight: float = 0.15
    map_sigma: float = 1.0  # Gaussian blur of the final map (pixels at model resolution; chosen on synthetic
    # validation of held-out training images: pixel AUROC 0.923 -> 0.934, pixel AP 0.44 -> 0.48 on fabric01)
    score_pool: int = 11  # image score = max of the map after this average pool (reference: 21 at 256 px)

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 8:
            raise ConfigError(f"dsr: image_size {self.image_size} must be a multiple of 8 and at least 16")
        for name in ("hidden", "res_hidden", "embedding_dim", "subspace_width", "decoder_width", "detector_width"):
            if getattr(self, name) < 2:
                raise ConfigError(f"dsr: {name} must be at least 2, got {getattr(self, name)}")
        if self.hidden % 2:
            raise ConfigError(f"dsr: hidden must be even, got {self.hidden}")
        if self.codebook_size < 4:
            raise ConfigError(f"dsr: codebook_size must be at least 4, got {self.codebook_size}")
        if self.res_blocks < 0 or self.upsampler_width < 2:
            raise ConfigError("dsr: res_blocks must be >= 0 and upsampler_width >= 2")
        if self.detector_downscale not in (1, 2, 4):
            raise ConfigError(f"dsr: detector_downscale must be 1, 2 or 4, got {self.detector_downscale}")
        side = self.image_size // self.detector_downscale
        if not 1 <= self.detector_depth <= 6 or side % (2**self.detector_depth):
            raise ConfigError(
                f"dsr: detector_depth {self.detector_depth} must be 1..6 and 2**depth must divide "
                f"image_size / detector_downscale ({side})"
            )
        if not 0.0 < self.codebook_decay < 1.0:
            raise ConfigError(f"dsr: codebook_decay must be in (0, 1), got {self.codebook_decay}")
        if not 0.0 <= self.strength_min <= self.strength_max <= 1.0:
            raise ConfigError("dsr: need 0 <= strength_min <= strength_max <= 1")
        if not 1 <= self.vq_updates_per_iteration <= 16:
            raise ConfigError("dsr: vq_updates_per_iteration must be 1..16")
        if not 0.0 <= self.vq_defect_share <= 1.0:
            raise ConfigError("dsr: vq_defect_share must be in [0, 1]")
        if not 0.0 <= self.anomaly_probability <= 1.0:
            raise ConfigError("dsr: anomaly_probability must be in [0, 1]")
        if min(self.vq_weight, self.dsr_weight, self.upsampling_weight) < 0 or self.dsr_weight <= 0:
            raise ConfigError("dsr: stage weights must be >= 0 and dsr_weight > 0")
        if self.vq_weight == 0 and not self.vq_init:
            raise ConfigError("dsr: vq_weight 0 (frozen VQ-VAE) needs vq_init ('bundled' or a pretrain-vq file)")
        if not 0.0 <= self.map_sigma <= 16.0:
            raise ConfigError(f"dsr: map_sigma must be in [0, 16], got {self.map_sigma}")
        if self.score_pool < 1 or self.score_pool % 2 == 0:
            raise ConfigError(f"dsr: score_pool must be an odd number >= 1, got {self.score_pool}")
        if self.lr <= 0 or self.vq_lr <= 0:
            raise ConfigError("dsr: lr and vq_lr must be positive")


# ---------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------


class ResStack(nn.Module):
    """VQ-VAE residual stack: x + conv1x1(relu(conv3x3(relu(x)))), then ReLU."""

    def __init__(self, channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(), nn.Conv2d(channels, hidden, 3, 1, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
            )
            for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return F.relu(x)


class EmaQuantizer(nn.Module):
    """Vector quantizer with an EMA-updated codebook (van den Oord et al. 2017, appendix) and dead-code restarts.

    Codebook updates happen only when `update` is True and the module is in training mode, so later stages can
    use the frozen codebook while the rest of the network trains."""

    def __init__(self, num_codes: int, dim: int, decay: float, dead_threshold: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_codes, self.dim, self.decay, self.eps = num_codes, dim, decay, eps
        self.dead_threshold = dead_threshold
        embed = torch.randn(num_codes, dim) * 0.1
        self.register_buffer("embedding", embed)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.update = False
        self.restarts = 0  # dead codes restarted since construction (diagnostics)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        e = self.embedding
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None, :]
        return dist.argmin(1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, H, W) code indices -> (B, D, H, W) codebook vectors."""
        return self.embedding[idx].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, D, H, W) -> (quantized with straight-through gradient, indices (B, H, W), commitment loss)."""
        with torch.autocast(z.device.type, enabled=False):  # distances and EMA in float32 under mixed precision
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, d, h, w = z.shape
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and self.update and not bool(self.initialised):
            # initialise from data: far faster to converge than random vectors
            pick = torch.randint(len(flat), (self.num_codes,), device=flat.device)
            self.embedding.copy_(flat[pick])
            self.embed_avg.copy_(flat[pick])
            self.cluster_size.fill_(1.0)
            self.initialised.fill_(True)
        idx = self.nearest(flat)
        if self.training and self.update:
            self._ema_update(flat, idx)
        q = self.embedding[idx].view(b, h, w, d).permute(0, 3, 1, 2)
        commit = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), idx.view(b, h, w), commit

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.num_codes).to(flat.dtype)
        counts = onehot.sum(0)
        sums = onehot.t() @ flat
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        self.embedding.copy_(self.embed_avg / size[:, None])
        dead = self.cluster_size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            # restart unused codes on random encoder outputs of this batch (slightly jittered)
            pick = torch.randint(len(flat), (n_dead,), device=flat.device)
            fresh = flat[pick] + 0.01 * flat.std() * torch.randn_like(flat[pick])
            self.embedding[dead] = fresh
            self.embed_avg[dead] = fresh * self.dead_threshold
            self.cluster_size[dead] = self.dead_threshold
            self.restarts += n_dead


def _num(t: torch.Tensor) -> float:
    return float(t.detach())


def perplexity(idx: torch.Tensor, num_codes: int) -> float:
    """exp(entropy) of the code histogram: 1 = one code used, num_codes = all used equally."""
    counts = torch.bincount(idx.flatten(), minlength=num_codes).float()
    p = counts / counts.sum()
    return float(torch.exp(-(p * torch.log(p + 1e-10)).sum()))


class ImageDecoder(nn.Module):
    """(bottom codes at 1/4, top codes at 1/8) -> image. Used as the VQ-VAE's general decoder and as DSR's
    object-specific decoder (separate weights)."""

    def __init__(self, dim: int, hidden: int, res_blocks: int, res_hidden: int) -> None:
        super().__init__()
        self.up_top = nn.ConvTranspose2d(dim, dim, 4, 2, 1)
        self.body = nn.Sequential(
            nn.Conv2d(2 * dim, hidden, 3, 1, 1),
            ResStack(hidden, res_hidden, res_blocks),
            nn.ConvTranspose2d(hidden, hidden // 2, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden // 2, 3, 4, 2, 1),
        )

    def forward(self, q_b: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([q_b, self.up_top(q_t)], dim=1))


class VQVAE2(nn.Module):
    """Two-level VQ-VAE (VQ-VAE-2 style): bottom codes at 1/4 resolution conditioned on the decoded top codes
    (1/8)."""

    def __init__(self, hidden: int, res_blocks: int, res_hidden: int, dim: int, num_codes: int, decay: float,
                 dead_threshold: float) -> None:  # fmt: skip
        super().__init__()
        self.enc_b = nn.Sequential(
            nn.Conv2d(3, hidden // 2, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(hidden // 2, hidden, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1),
            ResStack(hidden, res_hidden, res_blocks),
        )
        self.enc_t = nn.Sequential(
            nn.Conv2d(hidden, hidden, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1),
            ResStack(hidden, res_hidden, res_blocks),
        )
        self.pre_t = nn.Conv2d(hidden, dim, 1)
        self.vq_t = EmaQuantizer(num_codes, dim, decay, dead_threshold)
        self.dec_t = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, 1, 1),
            ResStack(hidden, res_hidden, res_blocks),
            nn.ConvTranspose2d(hidden, dim, 4, 2, 1),
        )
        self.pre_b = nn.Conv2d(hidden + dim, dim, 1)
        self.vq_b = EmaQuantizer(num_codes, dim, decay, dead_threshold)
        self.decoder = ImageDecoder(dim, hidden, res_blocks, res_hidden)

    def set_codebook_updates(self, on: bool) -> None:
        self.vq_t.update = on
        self.vq_b.update = on

    def bottom(self, enc_b: torch.Tensor, q_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.vq_b(self.pre_b(torch.cat([enc_b, self.dec_t(q_t)], dim=1)))

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        enc_b = self.enc_b(x)
        q_t, idx_t, commit_t = self.vq_t(self.pre_t(self.enc_t(enc_b)))
        q_b, idx_b, commit_b = self.bottom(enc_b, q_t)
        return {"enc_b": enc_b, "q_t": q_t, "q_b": q_b, "idx_t": idx_t, "idx_b": idx_b, "commit": commit_t + commit_b}

    def decode(self, q_b: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
        return self.decoder(q_b, q_t)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes = self.encode(x)
        return self.decode(codes["q_b"], codes["q_t"]), codes


def vq_from_config(cfg: DsrConfig) -> VQVAE2:
    return VQVAE2(cfg.hidden, cfg.res_blocks, cfg.res_hidden, cfg.embedding_dim, cfg.codebook_size,
                  cfg.codebook_decay, cfg.dead_code_threshold)  # fmt: skip


def vq_step(
    vq: VQVAE2, optimizer: torch.optim.Optimizer, x: torch.Tensor, commitment: float, scaler: Any = None
) -> dict[str, float]:
    """One VQ-VAE training step (shared by the "vq" stage and `pretrain-vq`); `scaler`: fp16 gradient scaling."""
    vq.train()
    vq.set_codebook_updates(True)
    recon, codes = vq(x)
    mse = F.mse_loss(recon, x)
    loss = mse + commitment * codes["commit"]
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    vq.set_codebook_updates(False)
    return {
        "total": _num(loss),
        "recon": _num(mse),
        "commit": _num(codes["commit"]),
        "perplexity_b": perplexity(codes["idx_b"], vq.vq_b.num_codes),
        "perplexity_t": perplexity(codes["idx_t"], vq.vq_t.num_codes),
    }


def unet(cin: int, cout: int, width: int, depth: int) -> UNet:
    """The shared U-Net (layers.UNet, skips + batch norm) with widths doubling per level up to 4x."""
    return UNet(cin, cout, [width * min(2**i, 4) for i in range(depth + 1)], skips=True, norm="batch")


# ---------------------------------------------------------------------------------------------------------
# feature-space anomalies
# ---------------------------------------------------------------------------------------------------------


def replace_codes(
    q: torch.Tensor, codebook: torch.Tensor, mask: torch.Tensor, strength: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Inside `mask` (B, H, W), replace each quantized vector of q (B, D, H, W) by a codebook entry drawn at random
    among its nearest `strength` share of the codebook, skipping the nearest 5% (so the new code is never the
    original one or a near-copy). Outside the mask q is returned unchanged (exactly)."""
    b = q.shape[0]
    k = codebook.shape[0]
    skip = max(1, int(0.05 * k))
    out = q.clone()
    for i in range(b):
        sel = mask[i] > 0.5
        if not bool(sel.any()):
            continue
        vecs = q[i].permute(1, 2, 0)[sel]  # (M, D)
        dist = vecs.pow(2).sum(1, keepdim=True) - 2 * vecs @ codebook.t() + codebook.pow(2).sum(1)[None, :]
        top = min(k, max(skip + 1, int(float(strength[i]) * k) + 1))
        order = dist.topk(top, dim=1, largest=False).indices[:, skip:]  # (M, top - skip)
        pick = torch.randint(order.shape[1], (len(vecs),), generator=generator, device=q.device)
        new = codebook[order[torch.arange(len(vecs), device=q.device), pick]]
        plane = out[i].permute(1, 2, 0)  # view into out
        plane[sel] = new
    return out


# ---------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------


def load_vq_file(path: str | Path) -> dict[str, Any]:
    """Read a `pretrain-vq` file safely (weights_only) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: VQ-VAE file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, pickled code, not a torch file
        raise CheckpointError(f"{path}: not a readable VQ-VAE file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != VQ_FILE_FORMAT:
        raise CheckpointError(f"{path}: not a DSR VQ-VAE file (made by `python -m recon_core pretrain-vq`)")
    if blob.get("version") != VQ_FILE_VERSION:
        raise CheckpointError(f"{path}: VQ-VAE file version {blob.get('version')!r}, expected {VQ_FILE_VERSION}")
    return blob


class Dsr(LabelledDefectsMixin, AnomalyModel):
    name: ClassVar[str] = "dsr"
    config_class: ClassVar[type[ModelConfig]] = DsrConfig
    description: ClassVar[str] = (
        "DSR: quantized-feature anomalies + subspace restriction, with a VQ-VAE trained by the project. "
        "Strong on textured surfaces; three training stages in one budget."
    )
    supports_grad_scaling: ClassVar[bool] = True
    preset_notes: ClassVar[dict[str, str]] = {
        "cpu": "128 px, sizes chosen for a 2-core CPU; its three stages are planned on a minutes budget.",
        "paper": "The published sizes: 256 px, 4096-code codebooks. A GPU only.",
    }
    # used when a run gives no budget: the budget the cpu preset was measured with (README, notes/dsr.md)
    preset_budgets: ClassVar[dict[str, dict[str, float]]] = {"cpu": {"minutes": 10}}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # 2-core CPU, ~15 min including the per-product VQ stage (measurements in notes/dsr.md)
        "cpu": {
            "image_size": 128,
            "batch_size": 8,
            "lr": 5e-4,
            "vq_lr": 1e-3,
            "hidden": 64,
            "res_blocks": 2,
            "res_hidden": 32,
            "embedding_dim": 64,
            "codebook_size": 256,
            "subspace_width": 48,
            "decoder_width": 64,
            "detector_width": 24,
            "detector_depth": 4,
            "upsampler_width": 8,
            "codebook_decay": 0.95,
            "score_pool": 11,
        },
        # paper sizes (GPU): 256 px, 4096 x 128 codebooks, lr 2e-4
        "paper": {
            "image_size": 256,
            "batch_size": 8,
            "lr": 2e-4,
            "vq_lr": 2e-4,
            "hidden": 128,
            "res_blocks": 2,
            "res_hidden": 64,
            "embedding_dim": 128,
            "codebook_size": 4096,
            "subspace_width": 128,
            "decoder_width": 128,
            "detector_width": 64,
            "detector_depth": 4,
            "upsampler_width": 32,
            "score_pool": 21,
            **GPU_SPEED,
        },
    }

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        if not isinstance(config, DsrConfig):
            raise ConfigError(f"dsr: expected a DsrConfig, got {type(config).__name__}")
        super().__init__(config, device)
        c = config
        self.vq = vq_from_config(c)
        self.subspace_b = unet(c.embedding_dim, c.embedding_dim, c.subspace_width, depth=2)
        self.subspace_t = unet(c.embedding_dim, c.embedding_dim, c.subspace_width, depth=1)
        self.object_decoder = ImageDecoder(c.embedding_dim, c.decoder_width, c.res_blocks, c.res_hidden)
        self.detector = unet(6, 2, c.detector_width, c.detector_depth)
        self.upsampler = unet(8, 2, c.upsampler_width, depth=2)
        self.vq_source: dict[str, Any] = {"kind": "untrained"}
        self.steps = {"vq": 0, "dsr": 0, "upsampling": 0}  # optimizer iterations per stage (saved)
        self._train_images: np.ndarray | None = None
        self._generator: Any = None
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._torch_gen: torch.Generator | None = None
        self._fast: tuple[tuple, Dsr] | None = None  # (weights key, frozen CPU scoring copy)
        self.to(self.device)

    def networks(self) -> dict[str, nn.Module]:
        return {
            "vq": self.vq,
            "subspace_bottom": self.subspace_b,
            "subspace_top": self.subspace_t,
            "object_decoder": self.object_decoder,
            "detector": self.detector,
            "upsampler": self.upsampler,
        }

    # ---- VQ-VAE initialisation ------------------------------------------------------------------------------
    def load_pretrained_vq(self, path: str | Path) -> dict[str, Any]:
        blob = load_vq_file(path)
        arch = blob.get("config", {})
        mismatched = {
            f: (arch.get(f), getattr(self.config, f)) for f in VQ_ARCH_FIELDS if arch.get(f) != getattr(self.config, f)
        }
        if mismatched:
            detail = ", ".join(f"{f}: file {a} vs model {b}" for f, (a, b) in mismatched.items())
            raise ConfigError(f"dsr.vq_init {path}: VQ-VAE sizes differ from the model config ({detail})")
        try:
            self.vq.load_state_dict(blob["state"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: VQ-VAE weights do not fit ({exc})") from exc
        self.vq.to(self.device)
        self.vq_source = {"kind": "pretrained", "path": str(path), "data": blob.get("data", {}),
                          "training": blob.get("training", {})}  # fmt: skip
        return blob

    def _resolve_vq_init(self) -> Path | None:
        init = self.config.vq_init
        if not init:
            return None
        path = bundled_vq_path() if init == "bundled" else Path(init)
        if not path.is_file():
            raise ConfigError(f"dsr.vq_init: {path} not found (make it with `python -m recon_core pretrain-vq`)")
        return path

    # ---- training -------------------------------------------------------------------------------------------
    def setup_training(self, train_images: np.ndarray, synth_config: Any, seed: int) -> None:
        from recon_core.synth import DefectGenerator, SynthConfig

        c: DsrConfig = self.config  # type: ignore[assignment]
        self.synth_config = synth_config if synth_config is not None else SynthConfig()
        # with labelled defects, some image-space defects are transplanted real ones (synth.real_defect_share)
        self._generator = DefectGenerator(self.synth_config, c.image_size, goods=train_images, bank=self.defect_bank)
        self._train_images = np.ascontiguousarray(train_images, dtype=np.float32) if train_images is not None else None
        self._torch_gen = torch.Generator(device=self.device)
        self._torch_gen.manual_seed(int(seed))
        path = self._resolve_vq_init()
        if path is not None and self.vq_source.get("kind") == "untrained":  # not when resuming a checkpoint
            self.load_pretrained_vq(path)
        dsr_params = [
            p
            for net in (self.subspace_b, self.subspace_t, self.object_decoder, self.detector)
            for p in net.parameters()
        ]
        self._optimizers = {
            "vq": torch.optim.Adam(self.vq.parameters(), lr=c.vq_lr),
            "dsr": torch.optim.Adam(dsr_params, lr=c.lr),
            "upsampling": torch.optim.Adam(self.upsampler.parameters(), lr=c.lr),
        }

    def stages(self) -> list[TrainingStage]:
        if not self._optimizers:
            raise ConfigError("dsr: call setup_training before stages()")
        c: DsrConfig = self.config  # type: ignore[assignment]
        out = []
        # each stage's synthesis runs ahead in train.fit's data workers (DsrSynth)
        vq_synth = DsrSynth(self._generator, "vq", c) if c.vq_defect_share > 0 else None
        if c.vq_weight > 0:
            vq_opts = [self._optimizers["vq"]]
            out.append(TrainingStage("vq", c.vq_weight, self._vq_step, vq_opts, lr_drops=(0.8,), synth=vq_synth))
        dsr_synth = DsrSynth(self._generator, "dsr", c)
        out.append(TrainingStage("dsr", c.dsr_weight, self._dsr_step, [self._optimizers["dsr"]], synth=dsr_synth))
        if c.upsampling_weight > 0:
            up_opts, up_synth = [self._optimizers["upsampling"]], DsrSynth(self._generator, "upsampling", c)
            out.append(TrainingStage("upsampling", c.upsampling_weight, self._upsampling_step, up_opts, synth=up_synth))
        return out

    def _vq_step(self, batch: dict[str, torch.Tensor] | torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        """VQ-VAE update(s) on a batch from train.fit ({"images", "augmented"} made by DsrSynth, or the image tensor
        when vq_defect_share is 0); extra updates per iteration sample and synthesise here."""
        losses: dict[str, float] = {}
        images = batch["augmented"] if isinstance(batch, dict) else batch
        for i in range(self.config.vq_updates_per_iteration):
            if i and self._train_images is not None:  # a fresh batch, sampled like train.fit does
                pick = rng.integers(0, len(self._train_images), len(images))
                images = self._vq_inputs(self._train_images[pick], rng)
            losses = self._one_vq_update(images)
        self.steps["vq"] += 1
        return losses

    def _vq_inputs(self, clean: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """(B, H, W, 3) clean images -> the VQ stage's input on the device, with DsrSynth's defects."""
        if self.config.vq_defect_share > 0:
            clean = DsrSynth(self._generator, "vq", self.config)(clean, rng)["augmented"].transpose(0, 2, 3, 1)
        return torch.from_numpy(np.ascontiguousarray(clean)).permute(0, 3, 1, 2).to(self.device)

    def _one_vq_update(self, images: torch.Tensor) -> dict[str, float]:
        self.vq_source = {"kind": "per_product"} if self.vq_source.get("kind") == "untrained" else self.vq_source
        if self.vq_source.get("kind") == "pretrained":
            self.vq_source = {**self.vq_source, "kind": "pretrained_finetuned"}
        return vq_step(self.vq, self._optimizers["vq"], images, self.config.commitment, self.grad_scaler)

    def _feature_anomalies(
        self, x: torch.Tensor, plan: dict[str, torch.Tensor] | np.random.Generator
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean codes, anomalous codes (top then bottom, so top anomalies also shape the bottom codes), and the
        full-resolution mask of what changed; `plan` is DsrSynth's "dsr" draw (masks, which levels, strength), or an
        rng to draw it here."""
        c: DsrConfig = self.config  # type: ignore[assignment]
        size = c.image_size
        if isinstance(plan, np.random.Generator):
            plan = self._prepare(x, "dsr", plan)
        clean = self.vq.encode(x)
        masks_b, level = plan["masks_b"].to(self.device), plan["level"].to(self.device)
        anomalous = plan["anomalous"].to(self.device)
        use_t = (level != 1).float() * anomalous  # level 0: top only, 1: bottom only, 2: both (reference code)
        use_b = (level != 0).float() * anomalous
        masks_t = F.max_pool2d(masks_b[:, None], 2)[:, 0]
        mask_t = masks_t * use_t[:, None, None]
        mask_b = masks_b * use_b[:, None, None]
        strength = plan["strength"].cpu()
        q_t = replace_codes(clean["q_t"], self.vq.vq_t.embedding, mask_t, strength, self._torch_gen)
        q_b, _, _ = self.vq.bottom(clean["enc_b"], q_t)
        q_b = replace_codes(q_b, self.vq.vq_b.embedding, mask_b, strength, self._torch_gen)
        full_t = F.interpolate(mask_t[:, None], size=(size, size), mode="nearest")[:, 0]
        full_b = F.interpolate(mask_b[:, None], size=(size, size), mode="nearest")[:, 0]
        return clean, q_b, q_t, torch.maximum(full_t, full_b)

    def _restore(
        self, q_b: torch.Tensor, q_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Subspace restriction, then re-quantization on the frozen codebooks (straight-through)."""
        r_t = self.subspace_t(q_t)
        r_b = self.subspace_b(q_b)
        rq_t, _, _ = self.vq.vq_t(r_t)
        rq_b, _, _ = self.vq.vq_b(r_b)
        return r_b, r_t, rq_b, rq_t

    def _dsr_step(self, batch: dict[str, torch.Tensor] | torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        c: DsrConfig = self.config  # type: ignore[assignment]
        batch = batch if isinstance(batch, dict) else self._prepare(batch, "dsr", rng)
        images = batch["images"]
        self.vq.eval()
        self.vq.set_codebook_updates(False)
        for net in (self.subspace_b, self.subspace_t, self.object_decoder, self.detector):
            net.train()
        with torch.no_grad():
            clean, q_b, q_t, mask = self._feature_anomalies(images, batch)
            recon_general = self.vq.decode(q_b, q_t)
        r_b, r_t, rq_b, rq_t = self._restore(q_b, q_t)
        recon_object = self.object_decoder(rq_b, rq_t)
        feat = F.mse_loss(r_b, clean["q_b"]) + F.mse_loss(r_t, clean["q_t"])
        image = F.mse_loss(recon_object, images)
        logits = self._detector_logits(recon_object.detach(), recon_general)
        focal = focal_loss(logits, mask, c.focal_gamma)
        loss = feat + c.image_loss_weight * image + focal
        real = self._real_focal(images, rng)
        if real is not None:
            loss = loss + real
        self.optimizer_step(loss, self._optimizers["dsr"])
        self.steps["dsr"] += 1
        return {"total": _num(loss), "features": _num(feat), "image": _num(image), "focal": _num(focal)}

    def _real_focal(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor | None:
        """With labelled defects: the detector also sees real defects, through the inference path (general vs
        object reconstruction), on synth.real_image_share of a batch (at least one sample): half the labelled
        images themselves, half their regions transplanted onto this batch's goods. Focal loss only: there is
        no clean image to restore them to."""
        share = getattr(self.synth_config, "real_image_share", 0.0)
        if self.defect_bank is None or share <= 0:
            return None
        n = max(1, round(share * len(images)))
        real, real_masks = self.defect_bank.real_positives(n, rng)
        goods = images[:n].detach().permute(0, 2, 3, 1).cpu().numpy()
        for i in range(len(goods)):
            fg = self._generator.foreground
            allowed = fg.mask(goods[i]) if fg.enabled else None
            pasted = self.defect_bank.paste(goods[i], rng, allowed) if rng.random() < 0.5 else None
            if pasted is not None:
                real[i], real_masks[i] = pasted
        x = torch.from_numpy(real).permute(0, 3, 1, 2).to(self.device)
        with torch.no_grad():
            codes = self.vq.encode(x)
            recon_general = self.vq.decode(codes["q_b"], codes["q_t"])
            _, _, rq_b, rq_t = self._restore(codes["q_b"], codes["q_t"])
            recon_object = self.object_decoder(rq_b, rq_t)  # detached, as in the synthetic-anomaly loss
        logits = self._detector_logits(recon_object, recon_general)
        return focal_loss(logits, torch.from_numpy(real_masks).to(self.device), self.config.focal_gamma)

    def _upsampling_step(
        self, batch: dict[str, torch.Tensor] | torch.Tensor, rng: np.random.Generator
    ) -> dict[str, float]:
        c: DsrConfig = self.config  # type: ignore[assignment]
        batch = batch if isinstance(batch, dict) else self._prepare(batch, "upsampling", rng)
        x, mask = batch["augmented"], batch["masks"]
        for net in (self.vq, self.subspace_b, self.subspace_t, self.object_decoder, self.detector):
            net.eval()
        self.vq.set_codebook_updates(False)
        self.upsampler.train()
        with torch.no_grad():
            recon_object, det_softmax = self._detect(x)
        logits = self.upsampler(torch.cat([x, recon_object, det_softmax], dim=1))
        focal = focal_loss(logits, mask, c.focal_gamma)
        self.optimizer_step(focal, self._optimizers["upsampling"])
        self.steps["upsampling"] += 1
        return {"total": _num(focal), "focal": _num(focal)}

    def _prepare(self, images: torch.Tensor, stage: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """A stage's batch made here, as train.fit's data workers make it, for a step given a bare image tensor."""
        made = DsrSynth(self._generator, stage, self.config)(images.detach().permute(0, 2, 3, 1).cpu().numpy(), rng)
        return {"images": images, **{k: torch.from_numpy(v).to(self.device) for k, v in made.items()}}

    # ---- inference ------------------------------------------------------------------------------------------
    def _detect(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.vq.encode(x)
        recon_general = self.vq.decode(codes["q_b"], codes["q_t"])
        _, _, rq_b, rq_t = self._restore(codes["q_b"], codes["q_t"])
        recon_object = self.object_decoder(rq_b, rq_t)
        logits = self._detector_logits(recon_object, recon_general)
        return recon_object, torch.softmax(logits, dim=1)

    def _detector_logits(self, recon_object: torch.Tensor, recon_general: torch.Tensor) -> torch.Tensor:
        """Detection U-Net on both reconstructions (at 1/detector_downscale resolution), logits at full size."""
        pair = torch.cat([recon_object, recon_general], dim=1)
        scale = self.config.detector_downscale
        if scale == 1:
            return self.detector(pair)
        logits = self.detector(F.avg_pool2d(pair, scale))
        return F.interpolate(logits, size=pair.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> anomaly maps (B, S, S) in [0, 1] (upsampling module's anomaly channel)."""
        recon_object, det_softmax = self._detect(x)
        if self.steps["upsampling"] == 0 and self.steps["dsr"] > 0:
            # the run stopped before the upsampling stage (time budget): the detector's map is still meaningful
            return det_softmax[:, 1]
        logits = self.upsampler(torch.cat([x, recon_object, det_softmax], dim=1))
        return torch.softmax(logits, dim=1)[:, 1]

    def scoring_copy(self) -> Dsr:
        """On the CPU, a frozen copy of this model for scoring (layers.freeze_for_inference: batch norm folded,
        channels_last), as DRAEM's inference_nets; rebuilt whenever the weights change. Elsewhere the model."""
        if self.device.type != "cpu":
            return self
        key = weights_key(list(self.networks().values()))
        if self._fast is None or self._fast[0] != key:
            with torch.random.fork_rng():  # building draws initial weights: never from the run's random stream
                twin = Dsr(self.config, "cpu")
            twin.load_state_dict(self.state_dict())
            twin.vq.set_codebook_updates(False)
            for net in twin.networks().values():
                freeze_for_inference(net)
            self._fast = (key, twin)
        return self._fast[1]

    def predict(self, images: np.ndarray, batch_size: int = 8) -> Prediction:
        c: DsrConfig = self.config  # type: ignore[assignment]
        self.train_mode(False)
        self.vq.set_codebook_updates(False)
        scorer = self.scoring_copy()
        layout = torch.channels_last if scorer is not self else torch.contiguous_format
        images = np.asarray(images)
        scores, maps = [], []
        for start in range(0, len(images), max(1, batch_size)):
            x = images_to_tensor(images[start : start + batch_size], c.image_size, self.device)
            with torch.no_grad():
                score, m = scorer.score_maps(x.contiguous(memory_format=layout))
            scores.append(score.cpu().numpy())
            maps.append(m.cpu().numpy())
        if not maps:
            return Prediction(np.zeros(0, np.float32), np.zeros((0, c.image_size, c.image_size), np.float32))
        return Prediction(np.concatenate(scores).astype(np.float32), np.concatenate(maps).astype(np.float32))

    def score_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> (image scores (B,), blurred maps (B, S, S)): the whole scoring path."""
        c: DsrConfig = self.config  # type: ignore[assignment]
        maps = gaussian_blur(self.forward_maps(x), c.map_sigma)
        return mean_pool_max(maps, c.score_pool), maps

    def onnx_module(self) -> nn.Module:
        self.train_mode(False)
        self.vq.set_codebook_updates(False)
        return _DsrScorer(self)

    # ---- persistence ----------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"vq_source": dict(self.vq_source), "steps": dict(self.steps)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        source = state.get("vq_source")
        if isinstance(source, dict):
            self.vq_source = dict(source)
        steps = state.get("steps")
        if isinstance(steps, dict):
            self.steps.update({k: int(v) for k, v in steps.items() if k in self.steps})

    def vq_stats(self, images: np.ndarray, batch_size: int = 8) -> dict[str, float]:
        """Reconstruction PSNR (dB) and code perplexities of the VQ-VAE on (N, H, W, 3) images."""
        return vq_stats(self.vq, images, self.config.image_size, self.device, batch_size)


class DsrSynth:
    """DSR's per-stage batch synthesis, run ahead by train.fit's data workers (picklable: generator + numbers).

    "vq": image-space synthetic defects in the first vq_defect_share of the batch. The general decoder must reproduce
    whatever is in the image, defects included, or the detector sees two equally "normal" reconstructions; a VQ-VAE
    fitted to a few good images alone has no codes for unseen colours/textures, and these defects give it those.
    "dsr": the feature-space anomaly draw (Perlin masks at 1/4 resolution, on each image's foreground when the
    foreground is on, as DRAEM's defects are; which samples and levels, strength).
    "upsampling": image-space defects and their masks (DRAEM's recipe)."""

    def __init__(self, generator: Any, stage: str, config: Any) -> None:
        self.generator, self.stage = generator, stage
        self.share, self.size = float(config.vq_defect_share), int(config.image_size)
        self.p = float(config.anomaly_probability)
        self.strength = (float(config.strength_min), float(config.strength_max))

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        b = len(images)
        if self.stage == "vq":
            out, n = images.copy(), max(1, round(self.share * b))
            out[:n] = self.generator.augment(images[:n], rng, force_defect=True)[0]
            return {"augmented": out.transpose(0, 3, 1, 2)}
        if self.stage == "dsr":
            return {
                "masks_b": self.generator.perlin_masks(b, rng, size=self.size // 4, images=images),
                "anomalous": (rng.random(b) < self.p).astype(np.float32),
                "level": rng.integers(0, 3, size=b),
                "strength": rng.uniform(*self.strength, size=b).astype(np.float32),
            }
        augmented, masks, _ = self.generator.augment(images, rng)
        return {"augmented": augmented.transpose(0, 3, 1, 2), "masks": masks}


class _DsrScorer(nn.Module):
    """The scoring path as one module (ONNX export): image (B, 3, S, S) in [0, 1] -> (scores (B,), maps)."""

    def __init__(self, model: Dsr) -> None:
        super().__init__()
        self.nets = nn.ModuleDict(model.networks())  # registers the weights for export
        self._model = [model]  # not a submodule: keeps the model's own forward logic

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._model[0].score_maps(x)


@torch.no_grad()
def vq_stats(vq: VQVAE2, images: np.ndarray, size: int, device: torch.device, batch_size: int = 8) -> dict[str, float]:
    vq.eval()
    vq.set_codebook_updates(False)
    mses, idx_b, idx_t = [], [], []
    for start in range(0, len(images), batch_size):
        x = images_to_tensor(images[start : start + batch_size], size, device)
        recon, codes = vq(x)
        mses.append(((recon.clamp(0, 1) - x) ** 2).flatten(1).mean(1))
        idx_b.append(codes["idx_b"].flatten())
        idx_t.append(codes["idx_t"].flatten())
    mse = torch.cat(mses)
    psnr = float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())
    return {
        "psnr": psnr,
        "perplexity_b": perplexity(torch.cat(idx_b), vq.vq_b.num_codes),
        "perplexity_t": perplexity(torch.cat(idx_t), vq.vq_t.num_codes),
    }


__all__ = [
    "VQVAE2",
    "Dsr",
    "DsrConfig",
    "DsrSynth",
    "EmaQuantizer",
    "bundled_vq_path",
    "load_vq_file",
    "perplexity",
    "replace_codes",
    "vq_stats",
]
