"""A 2-layer conv auto-encoder implementing AnomalyModel, for testing the training/persistence core without
depending on the real models. Register it with `register_tiny(monkeypatch)`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from recon_core.models.base import AnomalyModel, ModelConfig, Prediction, TrainingStage


@dataclass
class TinyConfig(ModelConfig):
    image_size: int = 32
    batch_size: int = 4
    lr: float = 1e-2
    width: int = 4
    two_stages: bool = False
    nan_at: int = 0  # make the loss NaN from this step on (tests); 0 = never
    step_sleep: float = 0.0  # seconds added to each step (budget tests)


class TinyNet(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, width, 3, padding=1)
        self.dec = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dec(torch.relu(self.enc(x))))


class TinyScorer(nn.Module):
    """The scoring path as one module: (B, 3, H, W) -> (scores (B,), maps (B, H, W))."""

    def __init__(self, net: TinyNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = ((self.net(x) - x) ** 2).mean(dim=1)
        return maps.flatten(1).amax(dim=1), maps


class TinyModel(AnomalyModel):
    name: ClassVar[str] = "tiny"
    config_class: ClassVar[type[ModelConfig]] = TinyConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {}, "wide": {"width": 8}}
    uses_labelled_defects: ClassVar[bool] = True

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.cfg: TinyConfig = config  # type: ignore[assignment]
        self.net = TinyNet(self.cfg.width)
        self.head = nn.Linear(1, 1)  # second stage's parameters
        self.steps_seen: list[str] = []
        self.finished = False
        self.labelled: np.ndarray | None = None
        self.to(self.device)

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net, "head": self.head}

    def set_labelled_defects(self, images: np.ndarray, masks: np.ndarray | None = None) -> None:
        self.labelled = images

    def setup_training(self, train_images: np.ndarray, synth_config: Any, seed: int) -> None:
        self.synth_config = synth_config
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)
        self.opt2 = torch.optim.SGD(self.head.parameters(), lr=self.cfg.lr * 2)
        self.lr_trace: list[tuple[str, float]] = []
        self.calls = 0

    def _step(self, images: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        import time

        self.calls += 1
        if self.cfg.step_sleep:
            time.sleep(self.cfg.step_sleep)
        self.lr_trace.append(("main", self.opt.param_groups[0]["lr"]))
        noise = torch.from_numpy(rng.normal(0, 0.05, size=images.shape).astype(np.float32)).to(images.device)
        loss = ((self.net((images + noise).clamp(0, 1)) - images) ** 2).mean()
        if self.cfg.nan_at and self.calls >= self.cfg.nan_at:
            loss = loss * float("nan")
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"mse": float(loss.detach()), "total": float(loss.detach())}

    def _step2(self, images: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        self.lr_trace.append(("head", self.opt2.param_groups[0]["lr"]))
        x = images.mean(dim=(1, 2, 3)).unsqueeze(1)
        loss = ((self.head(x) - 1) ** 2).mean()
        self.opt2.zero_grad()
        loss.backward()
        self.opt2.step()
        return {"head": float(loss.detach()), "total": float(loss.detach())}

    def stages(self) -> list[TrainingStage]:
        out = [TrainingStage("main", 3.0 if self.cfg.two_stages else 1.0, self._step, [self.opt])]
        if self.cfg.two_stages:
            out.append(TrainingStage("head", 1.0, self._step2, [self.opt2], lr_drops=(0.5,)))
        return out

    def finish_training(self, train_images: np.ndarray) -> None:
        self.finished = True

    def onnx_module(self) -> nn.Module:
        return TinyScorer(self.net).eval()

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 8) -> Prediction:
        scorer = TinyScorer(self.net).eval()
        scores, maps = [], []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).permute(0, 3, 1, 2).to(self.device)
            s, m = scorer(x)
            scores.append(s.cpu().numpy())
            maps.append(m.cpu().numpy())
        return Prediction(np.concatenate(scores), np.concatenate(maps))


def register_tiny(monkeypatch: Any) -> None:
    from recon_core import models

    monkeypatch.setitem(models.MODEL_MODULES, "tiny", ("tiny_model", "TinyModel", False))


def tiny_images(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0.2, 0.8, size, dtype=np.float32)[None, :, None] * np.ones((size, size, 3), np.float32)
    return np.clip(base[None] + rng.normal(0, 0.02, (n, size, size, 3)).astype(np.float32), 0, 1)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_mvtec(root: Path, n_train: int = 8, n_good: int = 4, n_defect: int = 4, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    base = (np.linspace(60, 190, size)[None, :, None] * np.ones((size, size, 3))).astype(np.uint8)

    def good() -> np.ndarray:
        return np.clip(base + rng.integers(-5, 6, base.shape), 0, 255).astype(np.uint8)

    for i in range(n_train):
        _save(root / "train" / "good" / f"{i:03d}.png", good())
    for i in range(n_good):
        _save(root / "test" / "good" / f"{i:03d}.png", good())
    for i in range(n_defect):
        img, mask = good(), np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size - 12, 2)
        img[y : y + 8, x : x + 8] = 255
        mask[y : y + 8, x : x + 8] = 255
        _save(root / "test" / "crack" / f"{i:03d}.png", img)
        _save(root / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root
