"""One place that makes a run reproducible: every random stream a run draws from is seeded here, before the model is
built (its starting weights are the first draw), and again by `train.fit` before the first batch."""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from recon_core.models.base import AnomalyModel


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's global and torch's generators (CPU and every GPU) and ask torch for deterministic
    kernels where it has them. `warn_only`: an op without a deterministic version still runs (and warns) instead of
    failing a user's training; on CPU every op this project uses is deterministic for a fixed thread count."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # cuBLAS needs this set before its first use to give deterministic matmuls; harmless elsewhere
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def seeded_model(cls: type[AnomalyModel], config: Any, device: torch.device, seed: int) -> AnomalyModel:
    """`cls(config, device)` with starting weights that depend on `seed` alone, not on what the process drew before."""
    seed_everything(seed)
    return cls(config, device)
