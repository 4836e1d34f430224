"""Pick the compute device: CUDA, then Apple MPS, then CPU; always overridable."""

from __future__ import annotations

import os

import torch

from recon_core.errors import ConfigError


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.insert(0, "cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.insert(0, "mps")
    return devices


def normalize_device(preference: str | None) -> str:
    """The one name of a device setting, for "one job per device": 'auto' -> what it picks; 'cpu', 'CPU', 'cpu:0',
    'cpu:1' -> 'cpu' (one pool of cores, whatever the index); 'cuda' -> 'cuda:0'; 'mps:0' -> 'mps'.
    ConfigError for anything else."""
    text = (preference or "auto").strip().lower()
    if text == "auto":
        text = available_devices()[0]
    kind, sep, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (sep and not index.isdigit()):
        raise ConfigError(f"unknown device {preference!r}: use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda":
        return f"cuda:{int(index or 0)}"
    return kind


def resolve_device(preference: str = "auto") -> torch.device:
    """'auto' picks the best available device; 'cpu', 'cuda', 'cuda:1', 'mps' are checked."""
    if preference in ("", "auto", None):
        return torch.device(available_devices()[0])
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {preference!r}: use auto, cpu, cuda or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    if device.type == "mps" and "mps" not in available_devices():
        raise ConfigError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
    return device


def configure_cpu_threads(threads: int | None = None) -> int:
    """Use every core we were given (respecting cgroup affinity) unless told otherwise."""
    if threads is None:
        env = os.environ.get("RECON_THREADS")
        threads = int(env) if env else len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
