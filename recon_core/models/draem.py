"""DRAEM (Zavrtanik, Kristan, Skočaj, ICCV 2021): discriminatively trained reconstruction anomaly embedding.

Training: a good image gets a synthetic defect (recon_core.synth.DefectGenerator); the *reconstructive*
network (encoder-decoder without skips) learns to restore the clean image (L2 + 1 - SSIM), the
*discriminative* U-Net sees concat(augmented, reconstruction) (6 channels) and segments the defect (2-class
softmax, focal loss gamma 2). Optional SSPCAB replaces the reconstructive encoder's last block and adds
0.1 x its own reconstruction MSE.

Scoring (official DRAEM test code): anomaly map = softmax channel 1 at the model resolution (the networks are
fully convolutional, so the map has the input's size); image score = max of the map after a k x k average
pool, k = 21 at 256 px scaled to the resolution (odd). Inputs stay in [0, 1], no ImageNet normalisation.

Presets: `paper` is the published configuration (GPU, hours); `gpu` a faster GPU setting; `cpu` and
`cpu-fast` were chosen by measurement on a 2-core CPU (see notes/draem.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recon_core.defect_bank import LabelledDefectsMixin
from recon_core.errors import ConfigError
from recon_core.models.base import GPU_SPEED, AnomalyModel, ModelConfig, Prediction, TrainingStage
from recon_core.models.layers import (
    NORMS,
    SSPCAB,
    UNet,
    draem_widths,
    focal_loss,
    freeze_for_inference,
    images_to_tensor,
    mean_pool_max,
    pool_size_for,
    ssim_loss,
    weights_key,
)


@dataclass
class DraemConfig(ModelConfig):
    image_size: int = 128
    batch_size: int = 8
    lr: float = 5e-4
    recon_width: int = 16  # base width w of the reconstructive net: blocks w, 2w, 4w, 8w, 8w (depth 5)
    recon_depth: int = 5
    disc_width: int = 16  # base width of the discriminative U-Net: w, 2w, 4w, 8w, 8w, 8w (depth 6)
    disc_depth: int = 6
    norm: str = "batch"  # batch | group | instance | none
    sspcab: bool = False  # SSPCAB replaces the last reconstructive encoder block
    sspcab_weight: float = 0.1
    focal_gamma: float = 2.0
    score_pool: int = 21  # average-pool window for the image score, in pixels at 256 px (scaled); <= 1: max
    train_crop: int = 0  # > 0: train on random crops of this side (scoring stays on the whole image, the nets are
    # fully convolutional): high resolution for thin defects at the cost per iteration of the crop size

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"draem.norm: {self.norm!r} is not one of {list(NORMS)}")
        for name in ("recon_width", "disc_width", "recon_depth", "disc_depth", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"draem.{name}: must be at least 1, got {getattr(self, name)}")
        if self.sspcab and self.recon_depth < 2:
            raise ConfigError("draem.sspcab needs recon_depth >= 2")
        if self.image_size < 8:
            raise ConfigError(f"draem.image_size: must be at least 8, got {self.image_size}")
        if not self.lr > 0:
            raise ConfigError(f"draem.lr: must be positive, got {self.lr}")
        if self.train_crop < 0 or self.train_crop > self.image_size or 0 < self.train_crop < 16:
            raise ConfigError(f"draem.train_crop: 0 (off) or 16..image_size, got {self.train_crop}")
        if self.focal_gamma < 0 or self.sspcab_weight < 0:
            raise ConfigError("draem.focal_gamma and draem.sspcab_weight must not be negative")


class DraemNets(nn.Module):
    """Both sub-networks; forward = (reconstruction, discriminative logits)."""

    def __init__(self, cfg: DraemConfig) -> None:
        super().__init__()
        self.reconstructive = UNet(
            3, 3, draem_widths(cfg.recon_width, cfg.recon_depth), skips=False, norm=cfg.norm, sspcab=cfg.sspcab
        )
        self.discriminative = UNet(6, 2, draem_widths(cfg.disc_width, cfg.disc_depth), skips=True, norm=cfg.norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.reconstructive(x)
        return recon, self.discriminative(torch.cat([x, recon], dim=1))


class Draem(LabelledDefectsMixin, AnomalyModel):
    name: ClassVar[str] = "draem"
    config_class: ClassVar[type[ModelConfig]] = DraemConfig
    description: ClassVar[str] = (
        "DRAEM: learns to inpaint synthetic defects and to segment them from the image and its reconstruction. "
        "Strong on objects and textures; gives pixel-accurate maps."
    )
    default_preset: ClassVar[str] = "cpu"
    supports_grad_scaling: ClassVar[bool] = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # The published configuration: 256 px, w = 128 / 64 (~97M parameters), Adam 1e-4, batch 8; the paper
        # trains 700 epochs of 200-400 images, i.e. ~20k iterations (see preset_budgets). GPU only.
        "paper": {"image_size": 256, "recon_width": 128, "disc_width": 64, "lr": 1e-4, "batch_size": 8, **GPU_SPEED},
        # A GPU setting that converges in ~10-20 min on one modern GPU.
        "gpu": {"image_size": 256, "recon_width": 64, "disc_width": 32, "lr": 2e-4, "batch_size": 8, **GPU_SPEED},
        # 2-core CPU (chosen by measurement, notes/draem.md): 128 px, a thin reconstructive net (it only has to
        # inpaint; w = 16 costs 0.64 GMAC/image vs 2.5 at w = 32) next to a discriminative net of the same base
        # width, lr 5e-4 (better than 1e-3 on synthetic validation from training images; 1e-4 is too slow for a
        # budget of a few hundred iterations), lr x0.1 at 80% / 90%.
        "cpu": {"image_size": 128, "recon_width": 16, "disc_width": 16, "lr": 5e-4, "batch_size": 8},
        # 2-core CPU, quicker: discriminative width 8 (~0.8 GMAC/image in all instead of ~1.25); not validated
        # separately for accuracy
        "cpu-fast": {"image_size": 128, "recon_width": 16, "disc_width": 8, "lr": 5e-4, "batch_size": 8},
        # 2-core CPU, thin defects (cracks, scratches a few pixels wide vanish at 128 px): 256 px, trained on random
        # 128 px crops so an iteration costs what a `cpu` one does; scoring runs on the whole 256 px image
        # (notes/product_aware.md)
        "cpu-hires": {
            "image_size": 256,
            "train_crop": 128,
            "recon_width": 16,
            "disc_width": 16,
            "lr": 5e-4,
            "batch_size": 8,
        },
    }
    preset_notes: ClassVar[dict[str, str]] = {
        "paper": "The published DRAEM: 256 px, ~97M parameters, ~20k iterations. A GPU only.",
        "gpu": "256 px, a quarter of the paper's widths: converges in ~10-20 min on one modern GPU.",
        "cpu": "128 px, narrow networks chosen for a 2-core CPU: ~1300 iterations in 10-15 minutes.",
        "cpu-fast": "As cpu with a narrower segmentation network: quicker, a little less accurate (not validated).",
        "cpu-hires": (
            "256 px trained on 128 px crops, for thin defects (cracks, scratches 1-3 px wide) that vanish at 128 px: "
            "an iteration costs ~10 % more than cpu, scoring ~4x (65 ms per image on a 2-core CPU). Measured on "
            "magnetic tile (median defect 6 px wide at 128 px): no better than cpu."
        ),
    }
    # suggested budgets per preset (the run's budget is set by the caller; these are what the presets were
    # chosen for)
    preset_budgets: ClassVar[dict[str, dict[str, float]]] = {
        "paper": {"iterations": 20000},
        "gpu": {"iterations": 8000},
        "cpu": {"minutes": 10},
        "cpu-fast": {"minutes": 3},
        "cpu-hires": {"minutes": 10},
    }

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        if not isinstance(config, DraemConfig):
            raise ConfigError(f"draem: expected a DraemConfig, got {type(config).__name__}")
        super().__init__(config, device)
        self.cfg: DraemConfig = config
        self.nets = DraemNets(config)
        self.optimizer: torch.optim.Optimizer | None = None
        self.generator: Any = None
        self._fast: tuple[tuple, nn.Module] | None = None  # (weights key, inference copy)
        self.to(self.device)

    # ---- construction ------------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"reconstructive": self.nets.reconstructive, "discriminative": self.nets.discriminative}

    def to(self, device: torch.device | str) -> Draem:
        super().to(device)
        if self.cfg.channels_last:
            self.nets.to(memory_format=torch.channels_last)
        return self

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    @property
    def pool_size(self) -> int:
        return pool_size_for(self.cfg.image_size, self.cfg.score_pool) if self.cfg.score_pool > 1 else 1

    # ---- training ----------------------------------------------------------------------------------------
    def setup_training(self, train_images: np.ndarray, synth_config: Any, seed: int) -> None:
        from recon_core.synth import DefectGenerator, SynthConfig

        self.synth_config = synth_config if synth_config is not None else SynthConfig()
        # with labelled defects, some synthetic defects are transplanted real ones (synth.real_defect_share)
        self.generator = DefectGenerator(
            self.synth_config, self.cfg.image_size, goods=train_images, bank=self.defect_bank
        )
        # one Adam over both networks, as in the official code (the lr drops are applied by train.fit)
        self.optimizer = torch.optim.Adam(self.nets.parameters(), lr=self.cfg.lr)

    def stages(self) -> list[TrainingStage]:
        if self.optimizer is None:
            raise ConfigError("draem: call setup_training before stages()")
        synth = DraemSynth(self.generator, self.cfg.train_crop)
        return [TrainingStage("draem", 1.0, self._step, [self.optimizer], synth=synth)]

    def losses(
        self, clean: torch.Tensor, augmented: torch.Tensor, masks: torch.Tensor, n_clean: int | None = None
    ) -> dict[str, torch.Tensor]:
        """DRAEM's loss on one batch: L2 + (1 - SSIM) of the reconstruction vs the clean image, focal loss of
        the segmentation vs the defect mask, + sspcab_weight x SSPCAB MSE. Only the first `n_clean` samples
        (default all) have a clean image; the rest (real defect images) train the segmentation alone."""
        recon, logits = self.nets(augmented)
        n = len(clean) if n_clean is None else n_clean
        out = {
            "l2": F.mse_loss(recon[:n], clean[:n]),
            "ssim": ssim_loss(recon[:n], clean[:n]),
            "focal": focal_loss(logits, masks, gamma=self.cfg.focal_gamma),
        }
        total = out["l2"] + out["ssim"] + out["focal"]
        aux = self.nets.reconstructive.aux_loss()
        if aux is not None:
            out["sspcab"] = aux
            total = total + self.cfg.sspcab_weight * aux
        out["total"] = total
        return out

    def synthesize(self, images: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean (B, 3, H, W) batch -> (augmented batch, masks (B, H, W)) on the model's device. Off the training
        path: train.fit has DraemSynth make these in its data workers, from the CPU copy of the batch."""
        if self.generator is None:
            raise ConfigError("draem: call setup_training before training steps")
        made = DraemSynth(self.generator)(images.detach().permute(0, 2, 3, 1).float().cpu().numpy(), rng)
        return self._format(torch.from_numpy(made["augmented"])), torch.from_numpy(made["masks"]).to(self.device)

    def real_positives(
        self, augmented: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The batch's last samples replaced by labelled defect images (synth.real_image_share of the batch,
        binomial, at least one sample left synthetic) -> (augmented, masks, number of synthetic samples)."""
        share = getattr(self.synth_config, "real_image_share", 0.0)
        if self.defect_bank is None or share <= 0:
            return augmented, masks, len(augmented)
        n = min(int(rng.binomial(len(augmented), share)), len(augmented) - 1)
        if n <= 0:
            return augmented, masks, len(augmented)
        images, real_masks = self.defect_bank.real_positives(n, rng)
        side = augmented.shape[-1]
        if side < images.shape[1]:  # training on crops (train_crop): the same window size of the real images
            corners = rng.integers(0, images.shape[1] - side + 1, size=(n, 2))
            windows = [(slice(y, y + side), slice(x, x + side)) for y, x in corners]
            images = np.stack([im[w] for im, w in zip(images, windows, strict=True)])
            real_masks = np.stack([m[w] for m, w in zip(real_masks, windows, strict=True)])
        augmented, masks = augmented.clone(), masks.clone()
        augmented[-n:] = self._format(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
        masks[-n:] = torch.from_numpy(np.ascontiguousarray(real_masks)).to(self.device)
        return augmented, masks, len(augmented) - n

    def _crop(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """A random train_crop x train_crop window of each image (train_crop 0: the images unchanged)."""
        corners = crop_corners(len(images), images.shape[-1], self.cfg.train_crop, rng)
        if corners is None:
            return images
        side = self.cfg.train_crop
        return torch.stack([img[:, y : y + side, x : x + side] for img, (y, x) in zip(images, corners, strict=True)])

    def _step(self, batch: dict[str, torch.Tensor] | torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        """One step on a prepared batch {"images", "augmented", "masks"} (train.fit's DraemSynth, crops included)
        or on a clean image tensor (cropped and synthesised here)."""
        assert self.optimizer is not None
        self.nets.train()
        if isinstance(batch, torch.Tensor):
            images = self._crop(batch, rng)
            augmented, masks = self.synthesize(images, rng)
        else:
            images, augmented, masks = batch["images"], self._format(batch["augmented"]), batch["masks"]
        augmented, masks, n_clean = self.real_positives(augmented, masks, rng)
        losses = self.losses(self._format(images), augmented, masks, n_clean)
        self.optimizer_step(losses["total"], self.optimizer)
        return {k: float(v.detach()) for k, v in losses.items()}

    # ---- inference ---------------------------------------------------------------------------------------
    def score_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> (image scores (B,), anomaly maps (B, S, S)); no grad handling."""
        _, logits = self.nets(x)
        maps = torch.softmax(logits, dim=1)[:, 1]
        return mean_pool_max(maps, self.pool_size), maps

    def inference_nets(self) -> nn.Module:
        """A frozen copy of the networks for scoring (layers.freeze_for_inference: batch norm folded, and on
        the CPU channels_last memory). Rebuilt whenever the weights change."""
        key = weights_key([self.nets])
        if self._fast is None or self._fast[0] != key:
            for module in self.nets.modules():  # a training forward without aux_loss() leaves a graph here
                if isinstance(module, SSPCAB):
                    module.last_loss = None
            fast = freeze_for_inference(copy.deepcopy(self.nets), channels_last=self.device.type == "cpu")
            self._fast = (key, fast)
        return self._fast[1]

    def _to_tensor(self, images: np.ndarray) -> torch.Tensor:
        return self._format(images_to_tensor(images, self.cfg.image_size, self.device))

    @torch.inference_mode()
    def predict(self, images: np.ndarray, batch_size: int = 8) -> Prediction:
        self.nets.eval()
        nets = self.inference_nets()
        images = np.asarray(images)
        scores, maps = [], []
        step = max(1, int(batch_size))
        for start in range(0, len(images), step):
            x = self._to_tensor(images[start : start + step])
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            _, logits = nets(x)
            m = torch.softmax(logits, dim=1)[:, 1]
            s = mean_pool_max(m, self.pool_size)
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
        if not scores:
            size = self.cfg.image_size
            return Prediction(np.zeros(0, np.float32), np.zeros((0, size, size), np.float32))
        return Prediction(
            image_scores=torch.cat(scores).numpy().astype(np.float32),
            maps=torch.cat(maps).numpy().astype(np.float32),
        )

    def onnx_module(self) -> nn.Module:
        """(B, 3, S, S) in [0, 1] -> (scores (B,), maps (B, S, S)); for ONNX export. Call .eval() on it."""
        return _DraemScorer(self)


def crop_corners(n: int, full: int, side: int, rng: np.random.Generator) -> np.ndarray | None:
    """(n, 2) random top-left corners of side x side windows in full x full images; None when not cropping."""
    if not side or side >= full:
        return None
    return rng.integers(0, full - side + 1, size=(n, 2))


class DraemSynth:
    """DRAEM's training batch synthesis, run by the data workers (picklable: the generator and the crop size):
    optional random train_crop windows, then the generator's defects."""

    def __init__(self, generator: Any, train_crop: int = 0) -> None:
        self.generator = generator
        self.train_crop = int(train_crop)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        corners = crop_corners(len(images), images.shape[2], self.train_crop, rng)
        if corners is not None:
            side = self.train_crop
            images = np.stack([img[y : y + side, x : x + side] for img, (y, x) in zip(images, corners, strict=True)])
        aug, masks, _ = self.generator.augment(images, rng, crops=corners is not None)
        return {
            "images": np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
            "augmented": np.ascontiguousarray(aug.transpose(0, 3, 1, 2)),
            "masks": masks,
        }


class _DraemScorer(nn.Module):
    def __init__(self, model: Draem) -> None:
        super().__init__()
        self.nets = model.nets
        self.pool = model.pool_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, logits = self.nets(x)
        maps = torch.softmax(logits, dim=1)[:, 1]
        return mean_pool_max(maps, self.pool), maps


__all__ = ["Draem", "DraemConfig", "DraemNets", "DraemSynth"]
