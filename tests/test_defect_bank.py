"""The defect bank (recon_core.defect_bank): transplanted real defects, their masks, the foreground, mixing with
Perlin defects in the DefectGenerator, and DRAEM / DSR training with a few real defects (issue 12 item 1)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from recon_core import defect_bank as db
from recon_core.defect_bank import DefectBank, cut_patches
from recon_core.errors import ConfigError
from recon_core.synth import DefectGenerator, SynthConfig

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: more threads only spin on a shared machine
    yield
    torch.set_num_threads(threads)


def goods(n: int, seed: int = 0) -> np.ndarray:
    """A 'product': a horizontal gradient with soft stripes at a random phase and faint noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    out = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i in range(n):
        base = 0.45 + 0.2 * xx + 0.08 * np.sin(2 * np.pi * (3 * yy + rng.uniform(0, 1)))
        out[i] = np.clip(base[..., None] + rng.normal(0, 0.02, (SIZE, SIZE, 3)), 0, 1)
    return out


def stains(n: int, seed: int, contrast: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Faint, soft-edged dark stains (a Gaussian, sigma 3-5 px): unlike the crisp, textured Perlin defects."""
    rng = np.random.default_rng(seed + 100)
    images, masks = goods(n, seed + 50), np.zeros((n, SIZE, SIZE), np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        (cy, cx), sigma = rng.uniform(8, SIZE - 8, 2), rng.uniform(3, 5)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)
        images[i] -= contrast * blob[..., None]
        masks[i] = blob > 0.5
    return np.clip(images, 0, 1), masks


def square_defects(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    images, masks = goods(n, 7), np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        images[i, 10 : 10 + 5 + i, 12 : 12 + 6] = [0.9, 0.1, 0.1]
        masks[i, 10 : 10 + 5 + i, 12 : 12 + 6] = 1
    return images, masks


def test_one_patch_per_region_and_specks_ignored() -> None:
    images, masks = square_defects(1)
    masks[0, 25:27, 25:28] = 1  # a second region
    masks[0, 2, 2] = 1  # a speck: annotation noise
    patches = cut_patches(images, masks > 0)
    assert len(patches) == 2
    assert sorted(int(p.mask.sum()) for p in patches) == [6, 30]
    assert all(p.image.shape[:2] == p.mask.shape for p in patches)


def test_empty_or_missing_masks_are_refused() -> None:
    images, masks = square_defects(2)
    with pytest.raises(ConfigError, match="masks"):
        DefectBank(images, None, SIZE)
    with pytest.raises(ConfigError, match="empty"):
        DefectBank(images, np.zeros_like(masks), SIZE)


@pytest.mark.parametrize("mode", db.BLEND_MODES)
def test_transplant_mask_matches_the_pasted_pixels(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BLEND_MODES", (mode,))
    bank = DefectBank(*square_defects(), SIZE)
    good = goods(1, 3)[0]
    rng = np.random.default_rng(0)
    for _ in range(40):
        out, mask = bank.paste(good, rng)
        inside = mask > 0
        assert out.dtype == np.float32 and mask.shape == (SIZE, SIZE) and inside.any()
        assert np.array_equal(out[~inside], good[~inside])  # nothing outside the mask changed
        changed = np.abs(out - good).max(axis=-1) > 0.02
        assert changed[inside].mean() > 0.8  # and the mask is what was pasted (red on grey)


def test_transplants_land_inside_the_foreground() -> None:
    bank = DefectBank(*square_defects(), SIZE)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disk = (yy - 16) ** 2 + (xx - 20) ** 2 < 8**2  # the product; the rest is background
    good = goods(1, 3)[0]
    rng = np.random.default_rng(1)
    for _ in range(40):
        out, mask = bank.paste(good, rng, allowed=disk)
        assert mask.any() and not (mask[~disk] > 0).any()
        assert np.array_equal(out[~disk], good[~disk])


def test_generator_mixes_real_and_perlin_defects_by_share() -> None:
    bank = DefectBank(*square_defects(), SIZE)
    batch = goods(16, 4)

    def red_share(share: float) -> float:
        config = SynthConfig(real_defect_share=share, texture_augmentations=0)
        grey = np.full((1, SIZE, SIZE, 3), 0.2, np.float32)  # Perlin defects are grey, the bank's are red
        gen = DefectGenerator(config, SIZE, textures=grey, bank=bank)
        aug, masks, has = gen.augment(batch, np.random.default_rng(2), force_defect=True)
        assert has.all() and all(m.any() for m in masks)
        red = (aug[..., 0] - aug[..., 1] > 0.5) & (masks > 0)  # only the bank's defects are saturated red
        return float(np.mean([r.any() for r in red]))

    assert red_share(0.0) == 0.0
    assert red_share(1.0) == 1.0
    assert 0.0 < red_share(0.5) < 1.0


def test_generator_with_a_bank_pickles_and_follows_the_rng() -> None:
    bank = DefectBank(*square_defects(), SIZE)
    gen = DefectGenerator(SynthConfig(texture_source="noise", real_defect_share=0.7), SIZE, bank=bank)
    clone = pickle.loads(pickle.dumps(gen))  # DataLoader workers get a copy
    a = gen.augment(goods(8), np.random.default_rng(5))
    b = clone.augment(goods(8), np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_real_defect_share_is_validated() -> None:
    with pytest.raises(ConfigError, match="real_defect_share"):
        SynthConfig(real_defect_share=1.5)
    with pytest.raises(ConfigError, match="real_image_share"):
        SynthConfig(real_image_share=0.9)


def test_draem_with_three_real_stains_separates_stains_better() -> None:
    """Perlin defects are crisp and textured; faint soft stains are not. Three labelled stains (transplanted and as
    positives) must make the same tiny DRAEM, same seed and iterations, separate unseen stains better."""
    from sklearn.metrics import roc_auc_score

    from recon_core.models.base import Budget
    from recon_core.models.draem import Draem
    from recon_core.seeding import seeded_model
    from recon_core.train import fit

    tiny = {"image_size": SIZE, "recon_width": 8, "disc_width": 8, "recon_depth": 3, "disc_depth": 3, "lr": 2e-3}
    train, (labelled, labelled_masks) = goods(20, 0), stains(3, 1)
    test_goods, (test_stains, test_masks) = goods(20, 9), stains(20, 2)
    labels = np.r_[np.zeros(20), np.ones(20)]
    pixels = np.concatenate([np.zeros_like(test_masks), test_masks]).ravel()
    figures = {}
    for with_bank in (False, True):
        model = seeded_model(Draem, Draem.config_from_preset("cpu", **tiny), torch.device("cpu"), 0)
        if with_bank:
            model.set_labelled_defects(labelled, labelled_masks)
        fit(model, train, SynthConfig(texture_source="noise"), Budget(iterations=100), seed=0)
        pred = model.predict(np.concatenate([test_goods, test_stains]))
        figures[with_bank] = (roc_auc_score(labels, pred.image_scores), roc_auc_score(pixels, pred.maps.ravel()))
    (image_without, pixel_without), (image_with, pixel_with) = figures[False], figures[True]
    assert image_with > image_without and pixel_with > pixel_without + 0.05, figures


def test_dsr_detector_trains_on_the_labelled_defects(monkeypatch: pytest.MonkeyPatch) -> None:
    """DSR takes labelled defects: its detector gets a focal loss on them in the 'dsr' stage, and the image-space
    stages transplant them through the generator."""
    from recon_core.models.base import Budget
    from recon_core.models.dsr import Dsr
    from recon_core.train import fit

    tiny = {"image_size": SIZE, "hidden": 16, "res_blocks": 1, "res_hidden": 8, "embedding_dim": 8,
            "codebook_size": 16, "subspace_width": 8, "decoder_width": 8, "detector_width": 8, "detector_depth": 2,
            "upsampler_width": 4, "score_pool": 3}  # fmt: skip
    model = Dsr(Dsr.config_from_preset("cpu", **tiny))
    assert model.uses_labelled_defects
    model.set_labelled_defects(*stains(3, 1))
    calls = []
    real_focal = Dsr._real_focal

    def spy(self: Dsr, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor | None:
        calls.append(real_focal(self, images, rng))
        return calls[-1]

    monkeypatch.setattr(Dsr, "_real_focal", spy)
    fit(model, goods(8), SynthConfig(texture_source="noise"), Budget(iterations=6), seed=0)
    assert model._generator.bank is model.defect_bank
    assert calls and all(c is not None and torch.isfinite(c) for c in calls)
    with pytest.raises(ConfigError, match="masks"):
        model.set_labelled_defects(stains(2, 1)[0], None)


def test_a_training_defect_never_counts_in_the_evaluation(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DRAEM through execute_run with K = 2: the two images the bank is cut from are not in the evaluation, by
    path or by content."""
    import json

    from tiny_model import make_mvtec

    from recon_core.defect_bank import LabelledDefectsMixin
    from recon_core.evaluation import load_eval
    from recon_core.images import load_image
    from recon_core.runs import RunSpec, execute_run

    taken = {}
    original = LabelledDefectsMixin.set_labelled_defects

    def spy(self, images: np.ndarray, masks: np.ndarray | None = None) -> None:
        taken["images"] = np.array(images)
        original(self, images, masks)

    monkeypatch.setattr(LabelledDefectsMixin, "set_labelled_defects", spy)
    monkeypatch.setenv("RECON_THREADS", "1")
    data = make_mvtec(tmp_path / "data")
    tiny = {"image_size": SIZE, "recon_width": 8, "disc_width": 8, "recon_depth": 3, "disc_depth": 3}
    spec = RunSpec(str(data), model="draem", preset="cpu", model_overrides=tiny, iterations=3, labelled_defects=2)
    result = execute_run(spec, tmp_path / "run")
    used = json.loads((tmp_path / "run" / "data.json").read_text())["labelled_defects"]
    evaluation = load_eval(tmp_path / "run" / "eval")
    assert len(used) == 2 and not set(used) & set(evaluation.paths)
    assert result.metrics["n_defect"] == 4 - 2
    assert len(taken["images"]) == 2
    evaluated = [load_image(path, SIZE) for path in evaluation.paths]
    for image in taken["images"]:  # none of the evaluated images is a training defect
        assert not any(np.allclose(image, other, atol=1e-3) for other in evaluated)


@pytest.mark.usefixtures("tiny_model_env")
def test_cli_trains_with_named_defect_files_and_evaluates_without_them(tmp_path) -> None:
    import json

    from tiny_model import make_mvtec

    from recon_core.cli import main
    from recon_core.evaluation import load_eval

    data = make_mvtec(tmp_path / "data")
    named = ["test/crack/001.png", str(data / "test" / "crack" / "003.png")]
    args = ["train", str(data), "--model", "tiny", "--iterations", "2", "--out", str(tmp_path / "run"), "-q"]
    assert main([*args, *(x for n in named for x in ("--labelled-defect-file", n))]) == 0
    used = json.loads((tmp_path / "run" / "data.json").read_text())["labelled_defects"]
    assert sorted(Path(p).name for p in used) == ["001.png", "003.png"]
    evaluated = {Path(p).resolve() for p in load_eval(tmp_path / "run" / "eval").paths}
    assert not evaluated & {Path(p).resolve() for p in used} and len(evaluated) == 4 + 4 - 2


@pytest.mark.usefixtures("tiny_model_env")
def test_named_defect_files_are_checked(tmp_path) -> None:
    from tiny_model import make_mvtec

    from recon_core.errors import DataError
    from recon_core.runs import RunSpec, execute_run

    data = make_mvtec(tmp_path / "data")

    def run(**kw: object) -> None:
        execute_run(RunSpec(str(data), model="tiny", iterations=1, **kw), tmp_path / "run")

    with pytest.raises(DataError, match="not an image of the test split"):
        run(labelled_defect_files=["test/crack/nope.png"])
    with pytest.raises(DataError, match="a good image"):
        run(labelled_defect_files=["test/good/000.png"])
    with pytest.raises(ConfigError, match="disagree"):
        RunSpec(str(data), labelled_defects=3, labelled_defect_files=["test/crack/001.png"])


@pytest.mark.parametrize(
    ("model", "tiny"),
    [
        ("draem", {"image_size": SIZE, "recon_width": 8, "disc_width": 8, "recon_depth": 3, "disc_depth": 3}),
        ("dsr", {"image_size": SIZE, "hidden": 16, "res_blocks": 1, "res_hidden": 8, "embedding_dim": 8,
                 "codebook_size": 16, "subspace_width": 8, "decoder_width": 8, "detector_width": 8,
                 "detector_depth": 2, "upsampler_width": 4, "score_pool": 3}),
    ],
)  # fmt: skip
def test_bench_with_labelled_defects_for_draem_and_dsr(model: str, tiny: dict, tmp_path, monkeypatch) -> None:
    """`bench --labelled-defects 2` runs DRAEM and DSR end to end (they used to refuse labelled defects)."""
    import csv
    import json as json_mod

    from tiny_model import make_mvtec

    from recon_core.cli import main

    monkeypatch.setenv("RECON_THREADS", "1")
    root = tmp_path / "root"
    make_mvtec(root / "cat")
    args = ["bench", "--models", model, "--categories", "cat", "--data-root", str(root), "--iterations", "3",
            "--labelled-defects", "2", "--set", json_mod.dumps(tiny), "--out", str(tmp_path / "out"),
            "--infer-repeats", "1", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "bench.csv").open()))
    assert len(rows) == 1 and rows[0]["labelled_defects"] == "2" and not rows[0].get("error")


def test_draem_real_positives_follow_the_batch_size_and_crop() -> None:
    """The labelled images replace the batch's last samples (never all of them) and, when DRAEM trains on crops,
    are cropped to the batch's window like the goods."""
    from recon_core.models.draem import Draem

    tiny = {"image_size": SIZE, "recon_width": 8, "disc_width": 8, "recon_depth": 3, "disc_depth": 3}
    model = Draem(Draem.config_from_preset("cpu", **tiny, train_crop=16))
    model.set_labelled_defects(*stains(3, 1))
    model.setup_training(goods(8), SynthConfig(texture_source="noise", real_image_share=0.5), 0)
    rng = np.random.default_rng(0)
    batch = torch.zeros(8, 3, 16, 16)
    counts = []
    for _ in range(20):
        augmented, masks, n_clean = model.real_positives(batch, torch.zeros(8, 16, 16), rng)
        assert augmented.shape == (8, 3, 16, 16) and masks.shape == (8, 16, 16) and 1 <= n_clean <= 8
        assert torch.all(augmented[:n_clean] == 0) and (n_clean == 8 or augmented[n_clean:].abs().sum() > 0)
        counts.append(8 - n_clean)
    assert 0 < np.mean(counts) < 8
    # one full training step on crops with real positives runs
    model.stages()[0].step(torch.from_numpy(goods(8)).permute(0, 3, 1, 2), rng)
