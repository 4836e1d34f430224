"""Numeric precision and memory layout of training, per model config (fields on ModelConfig, set by presets).

`precision`: "fp32" (default), "auto" (CUDA: bf16 autocast where the GPU supports it, else fp16 with gradient
scaling; CPU: bf16 where the CPU has AMX tiles, which run bf16 convolutions natively, else fp32; other devices:
fp32), "bf16" (autocast to bfloat16 on any device; on a CPU without AMX it is emulated and usually slower),
"fp16" (CUDA only, with gradient scaling). Losses stay float32 (SSIM and the focal loss upcast themselves: CPU
autocast, unlike CUDA's, leaves log_softmax in bf16) and are checked finite by train.fit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from recon_core.errors import ConfigError

PRECISIONS = ("fp32", "auto", "bf16", "fp16")


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon since Sapphire Rapids): bf16 matrix units that oneDNN uses for
    convolutions. DRAEM `cpu` steps ran ~2x faster under bf16 autocast there (benchmarks/results/train_speed.jsonl)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # a private torch helper: its absence or failure means "no"
        return False


def autocast_dtype(config: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype training `config` on `device` uses; None = plain float32."""
    precision = getattr(config, "precision", "fp32")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_has_amx() else None
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        if device.type != "cuda":
            raise ConfigError(f"precision 'fp16' needs a CUDA GPU (training on {device.type}); use bf16 or fp32")
        return torch.float16
    if device.type == "mps":
        raise ConfigError("precision 'bf16' is not supported on Apple MPS; use fp32")
    return torch.bfloat16


def training_precision(config: Any, device: torch.device) -> str:
    """What training `config` on `device` really runs in: "fp32", "bf16" or "fp16" (recorded with every run, as
    "auto" resolves differently per machine)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype(config, device)]


@contextlib.contextmanager
def autocast(dtype: torch.dtype | None, device: torch.device) -> Iterator[None]:
    """torch.autocast for `dtype` on `device`, or nothing for float32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (small gradients underflow in 16-bit floats); None otherwise (bf16 has float32's
    range)."""
    if dtype is torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def apply_layout(config: Any, model: Any) -> None:
    """channels_last (NHWC) networks and cuDNN autotuning, as the config asks."""
    if getattr(config, "channels_last", False):
        for net in model.networks().values():
            net.to(memory_format=torch.channels_last)
    if getattr(config, "cudnn_benchmark", False) and model.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once


__all__ = [
    "PRECISIONS",
    "apply_layout",
    "autocast",
    "autocast_dtype",
    "cpu_has_amx",
    "grad_scaler",
    "training_precision",
]
