"""Bundles: save/load round trip, thresholds, and every way a file can be bad -> CheckpointError."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from tiny_model import TinyConfig, TinyModel, tiny_images

from recon_core.bundle import FORMAT_VERSION, load_bundle, read_bundle_dict, read_metadata, save_bundle, set_threshold
from recon_core.errors import CheckpointError
from recon_core.metrics import Threshold
from recon_core.synth import SynthConfig

pytestmark = pytest.mark.usefixtures("tiny_model_env")


@pytest.fixture
def saved(tmp_path):
    model = TinyModel(TinyConfig(width=5))
    path = tmp_path / "model.pt"
    save_bundle(
        path,
        model,
        synth_config=SynthConfig(opacity_min=0.3, seed=4),
        threshold=Threshold(0.5, "manual", 0.25),
        metadata={"data": "somewhere", "shots": 3},
    )
    return model, path


def test_round_trip_gives_identical_scores(saved):
    model, path = saved
    loaded = load_bundle(path, "cpu")
    images = tiny_images(4)
    a, b = model.predict(images), loaded.model.predict(images)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert loaded.model.config == model.config and loaded.model.name == "tiny"
    assert loaded.synth_config == SynthConfig(opacity_min=0.3, seed=4)
    assert loaded.threshold == Threshold(0.5, "manual", 0.25)
    assert loaded.metadata["shots"] == 3 and loaded.metadata["torch"] == torch.__version__
    assert "created" in loaded.metadata and loaded.training_state is None
    assert not any(net.training for net in loaded.model.networks().values())


def test_bundle_holds_only_plain_types(saved):
    _, path = saved
    raw = torch.load(path, weights_only=True)  # would raise on any pickled object
    # no map normalisation: format 1, so older readers can still load it
    assert raw["format"] == "recon-studio-bundle" and raw["format_version"] == 1
    assert isinstance(raw["config"], str) and json.loads(raw["config"])["width"] == 5


def test_set_threshold_rewrites_only_the_threshold(saved):
    model, path = saved
    set_threshold(path, Threshold(0.9, "f1", params={"f1": 0.8}))
    loaded = load_bundle(path, "cpu")
    assert loaded.threshold.value == 0.9 and loaded.threshold.params == {"f1": 0.8}
    np.testing.assert_array_equal(
        loaded.model.predict(tiny_images(2)).image_scores, model.predict(tiny_images(2)).image_scores
    )
    set_threshold(path, None)
    assert load_bundle(path, "cpu").threshold is None
    assert read_metadata(path)["metadata"]["data"] == "somewhere"


def test_truncated_file(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_bundle(path, "cpu")


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=str(junk.name)):
        load_bundle(junk, "cpu")
    with pytest.raises(CheckpointError, match="no such file"):
        load_bundle(tmp_path / "absent.pt", "cpu")


def test_not_a_bundle(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a Recon Studio bundle"):
        load_bundle(path, "cpu")


def test_other_model_type(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="holds a 'tiny' model, expected 'draem'"):
        load_bundle(path, "cpu", expected_model="draem")
    raw = read_bundle_dict(path)
    raw["model"] = "no-such-model"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="unknown model"):
        load_bundle(path, "cpu")


def test_newer_format_version(saved):
    _, path = saved
    raw = read_bundle_dict(path)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="newer than this Recon Studio supports"):
        load_bundle(path, "cpu")


def test_unknown_config_keys(saved):
    _, path = saved
    raw = read_bundle_dict(path)
    raw["config"] = json.dumps({**json.loads(raw["config"]), "flux_capacitor": 3})
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="flux_capacitor"):
        load_bundle(path, "cpu")


def test_weights_of_another_shape(saved, tmp_path):
    _, path = saved
    raw = read_bundle_dict(path)
    raw["config"] = json.dumps({**json.loads(raw["config"]), "width": 7})
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_bundle(path, "cpu")


class _Payload:
    """Unpickling this would create a file: the classic malicious-checkpoint trick."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_executed(saved, tmp_path):
    _, path = saved
    marker = tmp_path / "pwned.txt"
    raw = read_bundle_dict(path)
    raw["metadata"] = _Payload(str(marker))  # a bundle-looking dict carrying code
    torch.save(raw, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="pickled Python objects or code"):
        load_bundle(path, "cpu")
    assert not marker.exists()
    # a legacy (non-zip) pickle file, too
    legacy = tmp_path / "legacy.pt"
    with open(legacy, "wb") as fh:
        pickle.dump({"format": "recon-studio-bundle", "x": _Payload(str(marker))}, fh)
    with pytest.raises(CheckpointError):
        load_bundle(legacy, "cpu")
    assert not marker.exists()


def test_save_is_atomic_on_failure(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def fail(obj, fh, *a, **k):
        fh.write(b"half")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(path, model, synth_config=None)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


def test_bundle_is_a_zip_checkpoint(saved):
    _, path = saved
    assert zipfile.is_zipfile(path)  # the modern torch format (mmap-able, weights_only-safe)
