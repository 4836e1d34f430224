"""A trained model on disk: one file with weights + config + synthetic-defect design + threshold + metadata.

Format: `torch.save` of a dict holding only tensors and plain Python types (so it loads with
`torch.load(weights_only=True)`, which refuses pickled code):

    {"format": "recon-studio-bundle", "format_version": 1 | 2, "model": name, "config": json, "synth": json,
     "threshold": json | None, "metadata": json, "state": model.state_dict(), "training_state": dict | None,
     "normalisation": dict | None (optional: map normalisation, see recon_core/normalisation.py)}

Configs are stored as JSON text and parsed strictly (unknown keys -> error), so a bundle from a newer version
with extra settings is refused with a clear reason instead of silently misbehaving.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import platform
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recon_core.config import from_dict, to_dict
from recon_core.errors import CheckpointError, ConfigError, ReconError

FORMAT = "recon-studio-bundle"
FORMAT_VERSION = 2  # the newest format this code reads. 2 = the bundle carries a map normalisation, which an older
# reader would silently ignore (other scores than intended), so it must refuse it; bundles without one stay 1
PLAIN_FORMAT_VERSION = 1


@dataclass
class LoadedBundle:
    model: Any  # AnomalyModel, on the requested device, in eval mode
    synth_config: Any  # SynthConfig | None
    threshold: Any  # metrics.Threshold | None
    metadata: dict[str, Any]
    training_state: dict[str, Any] | None
    path: str = ""


def default_metadata() -> dict[str, Any]:
    import recon_core

    return {
        "recon_core": recon_core.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _json_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(to_dict(value) if hasattr(value, "__dataclass_fields__") else value)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete half-written temporaries of `path` left by a writer that was killed mid-write (SIGKILL, power loss):
    a model-sized file each, otherwise never reclaimed. A live writer's temporary is left alone."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace: a kill or a full disk during the
    write leaves the previous file intact. OSError (e.g. ENOSPC) propagates after the temporary is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def bundle_dict(
    model: Any,
    *,
    synth_config: Any,
    threshold: Any = None,
    metadata: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta = {**default_metadata(), **(metadata or {})}
    return {
        "format": FORMAT,
        "format_version": PLAIN_FORMAT_VERSION if getattr(model, "normaliser", None) is None else FORMAT_VERSION,
        "model": model.name,
        "config": json.dumps(model.config_dict()),
        "synth": _json_or_none(synth_config),
        "threshold": _json_or_none(threshold),
        "metadata": json.dumps(meta, default=str),
        "state": model.state_dict(),
        "training_state": training_state,
        # map normalisation (recon_core.normalisation): chosen after training, absent in checkpoints
        "normalisation": None if getattr(model, "normaliser", None) is None else model.normaliser.state(),
    }


def save_bundle(
    path: str | Path,
    model: Any,
    *,
    synth_config: Any,
    threshold: Any = None,
    metadata: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> None:
    """Save atomically. `training_state` (optimizer states, iteration, rng) is only for checkpoints."""
    payload = bundle_dict(
        model, synth_config=synth_config, threshold=threshold, metadata=metadata, training_state=training_state
    )
    atomic_torch_save(payload, path)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's text (EOFError and friends may have none)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _looks_like_torch_file(path: Path) -> bool:
    """A zip checkpoint (torch >= 1.6) or a legacy pickle (protocol 2+ starts with 0x80)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def read_bundle_dict(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The raw bundle dict, checked for format and version; every failure is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes): not a checkpoint")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch_file(path):  # e.g. a photo renamed .pt: garbage, not code
            raise CheckpointError(f"{path}: not a torch checkpoint (unrecognised content)") from exc
        # weights_only refuses anything but tensors and plain types: the file holds pickled objects/code
        raise CheckpointError(
            f"{path}: refused to load: it contains pickled Python objects or code, which a Recon Studio bundle "
            f"never does (only load files you trust) ({_first_line(exc)})"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as exc:
        raise CheckpointError(
            f"{path}: truncated or corrupt file (not a readable torch checkpoint): {_first_line(exc)}"
        ) from exc
    except Exception as exc:  # torch raises assorted types on garbage; never let them escape unexplained
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a Recon Studio bundle (no '{FORMAT}' marker)")
    version = raw.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: bundle has no valid format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: bundle format version {version} is newer than this Recon Studio supports ({FORMAT_VERSION}); "
            "update Recon Studio"
        )
    for key in ("model", "config", "state"):
        if key not in raw:
            raise CheckpointError(f"{path}: bundle is missing '{key}'")
    return raw


def _parse_json(path: Path, raw: dict[str, Any], key: str) -> Any:
    text = raw.get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: bundle field '{key}' is not valid JSON") from exc


def build_model(raw: dict[str, Any], device: Any, path: Path, expected_model: str | None = None) -> Any:
    from recon_core.models import get_model_class

    name = raw["model"]
    if expected_model is not None and name != expected_model:
        raise CheckpointError(f"{path}: holds a {name!r} model, expected {expected_model!r}")
    try:
        cls = get_model_class(name)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    try:
        config = from_dict(cls.config_class, _parse_json(path, raw, "config"), where=f"{name} config")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: saved configuration is not usable by this version: {exc}") from exc
    model = cls(config, device)
    try:
        model.load_state_dict(raw["state"])
    except (ReconError, RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:  # e.g. state None
        raise CheckpointError(f"{path}: weights do not fit the {name!r} model: {str(exc)[:300]}") from exc
    return model


def load_bundle(path: str | Path, device: Any = "auto", *, expected_model: str | None = None) -> LoadedBundle:
    """Load a bundle (or a checkpoint) onto `device` ("auto" = best available). Never executes pickled code."""
    from recon_core.device import resolve_device
    from recon_core.metrics import Threshold
    from recon_core.synth import SynthConfig

    path = Path(path)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    raw = read_bundle_dict(path, map_location=dev)
    model = build_model(raw, dev, path, expected_model)
    model.train_mode(False)
    try:
        synth_dict = _parse_json(path, raw, "synth")
        synth = from_dict(SynthConfig, synth_dict, where="synth") if synth_dict is not None else None
        thr_dict = _parse_json(path, raw, "threshold")
        threshold = from_dict(Threshold, thr_dict, where="threshold") if thr_dict is not None else None
    except ReconError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    metadata = _parse_json(path, raw, "metadata") or {}
    model.synth_config = synth
    if raw.get("normalisation") is not None:
        from recon_core.normalisation import MapNormaliser

        try:
            model.normaliser = MapNormaliser.from_state(raw["normalisation"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
    return LoadedBundle(model, synth, threshold, metadata, raw.get("training_state"), str(path))


def set_threshold(path: str | Path, threshold: Any) -> None:
    """Replace the bundle's threshold (a metrics.Threshold or None), atomically; weights are untouched."""
    path = Path(path)
    raw = read_bundle_dict(path, map_location="cpu")
    raw["threshold"] = _json_or_none(threshold)
    atomic_torch_save(raw, path)


def read_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    raw = read_bundle_dict(path)
    return {
        "model": raw["model"],
        "config": _parse_json(path, raw, "config"),
        "synth": _parse_json(path, raw, "synth"),
        "threshold": _parse_json(path, raw, "threshold"),
        "metadata": _parse_json(path, raw, "metadata") or {},
    }
