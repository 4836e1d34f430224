"""Model registry: name -> class, imported lazily so a page that needs one model doesn't load them all."""

from __future__ import annotations

import importlib

from recon_core.errors import ConfigError
from recon_core.models.base import AnomalyModel

# name -> (module, class name, shown in the app's main list or under "advanced")
MODEL_MODULES: dict[str, tuple[str, str, bool]] = {
    "draem": ("recon_core.models.draem", "Draem", True),
    "dsr": ("recon_core.models.dsr", "Dsr", True),
    "autoencoder": ("recon_core.models.autoencoder", "AutoEncoder", False),
    "ganomaly": ("recon_core.models.ganomaly", "Ganomaly", False),
    "aae": ("recon_core.models.aae", "AdversarialAutoEncoder", False),
}


def model_names(include_advanced: bool = True) -> list[str]:
    return [name for name, (_, _, main) in MODEL_MODULES.items() if main or include_advanced]


def get_model_class(name: str) -> type[AnomalyModel]:
    if name not in MODEL_MODULES:
        raise ConfigError(f"unknown model {name!r}; choose from {sorted(MODEL_MODULES)}")
    module_name, class_name, _ = MODEL_MODULES[name]
    module = importlib.import_module(module_name)
    return getattr(module, class_name)
