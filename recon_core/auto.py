"""Model "auto": train quick candidates and a deep one inside the user's budget, choose the one that separates
defects from good parts best on data no candidate trained on, and keep the winner's bundle in the usual run folder.

No single model wins on every product (a plain autoencoder beat DRAEM 0.99 to 0.81 image AUROC on one product and
lost 0.62 to 1.00 on another), so the choice is measured per product:

* Held-out goods: a seeded share of the training goods is withheld from every candidate's training.
* With K >= 1 real defect images (RunSpec.labelled_defects): the ones that choose never train. If a candidate can
  train on real defects, K // 2 of them (at least 1) choose and the rest train; otherwise all K choose. They all
  leave the test evaluation, as training defects do. Real defects decide when they are decisive: the leader stays
  ahead of every other candidate in at least `decisive_share` of paired bootstrap resamples of the choosing
  defects and held-out goods (2 defects and 4 goods are a small sample; a lead that rests on one defect image is
  not a choice). Otherwise the probe defects decide, as without real defects. Candidates within `tie_margin` of
  the best are separated by the secondary signal.
* Without real defects: probe defects (probe_defects.py: scratches, stains, moved patches, blur at three
  strengths) on the held-out goods, a kind no candidate trained on. The signal is the mean image AUROC of held-out
  goods against each kind and strength; near ties go to the better probe pixel AUROC.

The test split is never used to choose; each candidate's test metrics are recorded for reference only.

Budget: a minutes budget gives the quick candidates `quick_share` of it first (each at most its preset's own
suggestion), and the deep candidates the time left, minus a small reserve for the choice. An iterations budget N
counts each candidate's own iterations: the deep ones train N, the quick ones min(N, quick_iterations).

Run folder: the winner's model.pt, eval.*, losses.csv, heatmaps/ and data.json at the top as in any run;
metrics.json = the winner's metrics + "auto" (candidates, signals, reason); candidates.json = the same record;
candidates/<model>/ = each candidate's own run folder.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon_core.auto_choice import choose, real_decisive, score_candidate
from recon_core.config import from_dict, load_json, save_json
from recon_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

AUTO = "auto"
CANDIDATES_FILE = "candidates.json"
WINNER_FILES = ("model.pt", "eval.npz", "eval.json", "losses.csv")
CHOICE_RESERVE = 0.04  # share of a minutes budget kept for scoring the candidates and writing the result
MIN_DEEP_MINUTES = 0.2
PROBE_SEED_OFFSET = 50_021
HOLDOUT_SEED_OFFSET = 7_919
VALIDATION_DEFECT_SEED_OFFSET = 104_729


@dataclass
class AutoConfig:
    """Settings of the auto strategy, given as RunSpec.model_overrides when model is "auto"."""

    quick: list[str] = field(default_factory=lambda: ["autoencoder"])
    deep: list[str] = field(default_factory=lambda: ["draem"])
    quick_share: float = 0.12  # of a minutes budget, for all quick candidates together
    quick_iterations: int = 250  # cap for a quick candidate under an iterations budget
    holdout_share: float = 0.2  # of the training goods, withheld from training to choose on
    tie_margin: float = 0.02
    # real defects decide only if the leader wins this share of bootstrap resamples of the choosing images
    decisive_share: float = 0.9
    bootstrap_resamples: int = 200
    candidate_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> config overrides

    def __post_init__(self) -> None:
        from recon_core.models import MODEL_MODULES

        names = self.candidates
        if not self.deep and not self.quick:
            raise ConfigError("auto: give at least one candidate model")
        if len(set(names)) != len(names):
            raise ConfigError(f"auto: a model is listed twice among the candidates {names}")
        unknown = [n for n in names if n not in MODEL_MODULES]
        if unknown:
            raise ConfigError(f"auto: unknown candidate model(s) {unknown}; choose from {sorted(MODEL_MODULES)}")
        stray = sorted(set(self.candidate_overrides) - set(names))
        if stray:
            raise ConfigError(f"auto: candidate_overrides for models that are not candidates: {stray}")
        if not 0 < self.quick_share < 1 or not 0 < self.holdout_share < 1:
            raise ConfigError("auto: quick_share and holdout_share must be between 0 and 1")
        if self.quick_iterations < 1 or self.tie_margin < 0:
            raise ConfigError("auto: quick_iterations must be >= 1 and tie_margin >= 0")
        if not 0.5 <= self.decisive_share <= 1 or self.bootstrap_resamples < 1:
            raise ConfigError("auto: decisive_share must be between 0.5 and 1 and bootstrap_resamples >= 1")

    @property
    def candidates(self) -> list[str]:
        return [*self.quick, *self.deep]


def auto_config(spec: Any) -> AutoConfig:
    return from_dict(AutoConfig, dict(spec.model_overrides), where="auto settings (model_overrides)")


def candidate_preset(cls: Any, preset: str | None) -> str:
    """The run's preset where the candidate has it (e.g. "cpu", "gpu"), else the candidate's default."""
    return preset if preset in cls.presets else cls.default_preset


def auto_presets(cfg: AutoConfig | None = None) -> list[str]:
    """Presets offered for auto: those every candidate has (in the deep model's order)."""
    from recon_core.models import get_model_class

    cfg = cfg or AutoConfig()
    classes = [get_model_class(n) for n in cfg.candidates]
    return [p for p in classes[-1].presets if all(p in c.presets for c in classes)]


def total_budget(spec: Any, cfg: AutoConfig) -> Any:
    """The run's budget; without one, the deep candidate's suggestion for its preset."""
    from recon_core.models import get_model_class
    from recon_core.models.base import Budget
    from recon_core.runs import budget_for

    main = get_model_class((cfg.deep or cfg.quick)[-1])
    if spec.stage_iterations:
        raise ConfigError(
            "auto trains several models: give iterations or minutes (stage iterations replay one model's run)"
        )
    if spec.iterations is None and spec.minutes is None:
        return budget_for(dataclasses.replace(spec, model=main.name), main, candidate_preset(main, spec.preset))
    if spec.iterations is not None and spec.minutes is not None:
        raise ConfigError("run spec: give iterations or minutes, not both")
    return Budget(iterations=spec.iterations, minutes=spec.minutes)


def candidate_configs(spec: Any) -> dict[str, Any]:
    """model name -> the config each candidate of this auto run trains with."""
    from recon_core.models import get_model_class

    cfg = auto_config(spec)
    out = {}
    for name in cfg.candidates:
        cls = get_model_class(name)
        out[name] = cls.config_from_preset(candidate_preset(cls, spec.preset), **cfg.candidate_overrides.get(name, {}))
    return out


def validate_auto_spec(spec: Any) -> None:
    """What execute_run would refuse at once, refused at submit time (jobs) too."""
    from recon_core.models import get_model_class

    cfg = auto_config(spec)
    if spec.init_from:
        raise ConfigError("auto: warm start (init_from) is not available; it trains several models from scratch")
    if spec.preset is not None and not any(spec.preset in get_model_class(n).presets for n in cfg.candidates):
        raise ConfigError(f"auto: no candidate has preset {spec.preset!r}; choose from {auto_presets(cfg)}")
    candidate_configs(spec)
    total_budget(spec, cfg)


def describe_plan(cfg: AutoConfig, n_goods: int, k_defects: int) -> str:
    """One paragraph for the Train page: what an auto run trains and what it chooses on."""
    from recon_core.models import get_model_class

    held = holdout_count(n_goods, cfg.holdout_share) if n_goods >= 3 else 0
    trains = any(get_model_class(n).uses_labelled_defects for n in cfg.candidates)
    k_val, k_train = split_defects(k_defects, trains)
    quick = ", ".join(m.upper() for m in cfg.quick) or "none"
    deep = ", ".join(m.upper() for m in cfg.deep) or "none"
    text = (
        f"AUTO trains the quick candidate(s) {quick} first ({cfg.quick_share:.0%} of a minutes budget), then "
        f"{deep} with the time left, each on {n_goods - held} of the {n_goods} training goods; {held} goods are "
        "held out to choose on. "
    )
    if k_val:
        text += f"{k_val} real defect image(s) choose the model" + (
            f" and {k_train} train the models that use real defects. " if k_train else ". "
        )
        text += (
            "If so few that the lead rests on one image (the leader ahead in under "
            f"{cfg.decisive_share:.0%} of resamples of them), the probe defects choose instead. "
        )
    else:
        text += (
            "With no real defect images it chooses on probe defects no candidate trained on (scratches, stains, "
            "moved patches, blur at three strengths) drawn on the held-out goods. "
        )
    return text + "The test images are never used to choose. The winner's model is kept."


def holdout_count(n: int, share: float) -> int:
    return int(min(max(1, round(n * share)), n - 2))


def split_defects(k: int, some_candidate_trains: bool) -> tuple[int, int]:
    """K real defects -> (choosing, training): the ones that choose never train."""
    if k <= 0:
        return 0, 0
    if not some_candidate_trains:
        return k, 0
    k_val = max(1, k // 2)
    return k_val, k - k_val


# ---------------------------------------------------------------------------------------------------------
# progress across candidates


class _Progress:
    """Maps each candidate's progress onto one run: global iteration, stage "<model> i/n: <stage>", and an ETA
    that includes the candidates still to come (their budget, for a minutes budget)."""

    def __init__(self, callback: Any, names: list[str], planned: dict[str, int] | None, seconds: float | None):
        self.callback, self.names, self.planned, self.seconds = callback, names, planned, seconds
        self.offset_it, self.offset_s, self.current = 0, 0.0, 0
        self.last: Any = None

    def start(self, index: int) -> Any:
        self.current = index
        return self._report if self.callback is not None else None

    def done(self, iterations: int, seconds: float) -> None:
        self.offset_it += int(iterations)
        self.offset_s += float(seconds)

    def _report(self, p: Any) -> None:
        from recon_core.models.base import Progress

        name = self.names[self.current]
        iteration = self.offset_it + p.iteration
        elapsed = self.offset_s + p.elapsed_s
        if self.planned is not None:
            total = self.offset_it + p.total_iterations + sum(self.planned[n] for n in self.names[self.current + 1 :])
            eta = p.eta_s
        else:
            last = self.current == len(self.names) - 1
            eta = p.eta_s if last or self.seconds is None else max(p.eta_s, self.seconds - elapsed)
            total = max(iteration, round(iteration * (elapsed + eta) / elapsed)) if elapsed > 0 else p.total_iterations
        self.last = Progress(
            stage=f"{name} {self.current + 1}/{len(self.names)}: {p.stage}",
            iteration=iteration,
            total_iterations=int(total),
            losses=dict(p.losses),
            images_per_s=p.images_per_s,
            elapsed_s=elapsed,
            eta_s=eta,
            lr=p.lr,
        )
        self.callback(self.last)

    def finish(self) -> None:
        if self.callback is not None and self.last is not None:
            p = self.last
            self.callback(dataclasses.replace(p, stage="auto: choosing", iteration=p.total_iterations, eta_s=0.0))


# ---------------------------------------------------------------------------------------------------------
# the run


@dataclass
class _Split:
    held_goods: list[str]
    validation_defects: list[str]  # choose, never train
    training_defects: list[str]  # train the candidates that use real defects
    goods: np.ndarray
    real: dict[str, Any] | None
    regions: np.ndarray | None = None  # where on the held-out goods the product is (probe defects go there)


def product_regions(synth: Any, goods: np.ndarray, held: np.ndarray) -> np.ndarray:
    """The foreground estimate the training defects use (synth.foreground), on the held-out goods."""
    from recon_core.foreground import estimate_foreground

    return estimate_foreground(goods, synth.foreground).masks(held)


def _split(spec: Any, cfg: AutoConfig) -> _Split:
    """Held-out goods and the real defects that choose / train, all seeded (the same on resume and on a replay),
    loaded at the largest candidate's image size."""
    from recon_core.images import load_dataset
    from recon_core.models import get_model_class
    from recon_core.runs import _take_labelled, _without, resolve_data_path

    data_path = resolve_data_path(spec.data)
    size = max(c.image_size for c in candidate_configs(spec).values())
    trains = any(get_model_class(n).uses_labelled_defects for n in cfg.candidates)
    dataset = load_dataset(data_path, size, shots=spec.shots, seed=spec.seed)
    n = len(dataset.train.paths)
    if n < 3:
        raise DataError(f"auto: needs at least 3 good training images to hold some out for the choice, got {n}")
    held = np.sort(
        np.random.default_rng(spec.seed + HOLDOUT_SEED_OFFSET).choice(
            n, size=holdout_count(n, cfg.holdout_share), replace=False
        )
    )
    named = spec.labelled_defect_files
    k_val, k_train = split_defects(len(named) if named else spec.labelled_defects, trains)
    real, val_paths, train_paths = None, [], []
    if k_val:
        pool = dataset.test
        if named:  # only the named defects (a project's choice): a seeded k_val of them choose, the rest train
            pool = _without(dataset.test, _take_labelled(dataset.test, 0, spec.seed, named, data_path)[0].paths)
        _, images, masks, val_paths = _take_labelled(pool, k_val, spec.seed + VALIDATION_DEFECT_SEED_OFFSET)
        real = {"images": images, "masks": masks}
        if k_train:  # exactly the ones execute_run will take from what is left (same function, same seed)
            train_paths = _take_labelled(_without(pool, val_paths), k_train, spec.seed)[3]
    return _Split(
        held_goods=[dataset.train.paths[i] for i in held],
        validation_defects=list(val_paths),
        training_defects=list(train_paths),
        goods=dataset.train.images[held],
        real=real,
        regions=product_regions(spec.synth, dataset.train.images, dataset.train.images[held]),
    )


def _candidate_spec(spec: Any, cfg: AutoConfig, name: str, split: _Split, budget: dict[str, Any]) -> Any:
    from recon_core.models import get_model_class

    cls = get_model_class(name)
    uses = cls.uses_labelled_defects and bool(split.training_defects)
    exclude = split.held_goods + split.validation_defects + ([] if uses else split.training_defects)
    return dataclasses.replace(
        spec,
        model=name,
        preset=candidate_preset(cls, spec.preset),
        model_overrides=dict(cfg.candidate_overrides.get(name, {})),
        labelled_defects=0,  # the training defects by name: exactly the ones the split chose
        labelled_defect_files=list(split.training_defects) if uses else [],
        exclude_paths=sorted(set(spec.exclude_paths) | set(exclude)),
        iterations=budget.get("iterations"),
        minutes=budget.get("minutes"),
        name=f"{spec.name or 'auto'}:{name}",
    )


def _quick_minutes(cfg: AutoConfig, name: str, preset: str | None, minutes: float) -> float:
    from recon_core.models import get_model_class

    cls = get_model_class(name)
    share = cfg.quick_share * minutes / max(1, len(cfg.quick))
    own = cls.suggested_budget(candidate_preset(cls, preset)).get("minutes")
    return float(min(share, own)) if own else float(share)


@dataclass
class Choice:
    winner: str
    reason: str
    signals: dict[str, dict[str, Any]]
    real_decided: bool  # real defects chose (there were some and they were decisive)
    probes: Any


def choose_trained(run_dir: Path, spec: Any, cfg: AutoConfig, split: _Split, names: list[str]) -> Choice:
    """Score the trained candidates (run_dir/candidates/<name>/model.pt) on the probes and the choosing defects and
    pick one. Deterministic given the run's spec: a kept run's choice can be replayed (benchmarks/auto_rechoose.py)."""
    from recon_core.bundle import load_bundle
    from recon_core.probe_defects import make_probe_set

    probes = make_probe_set(split.goods, spec.seed + PROBE_SEED_OFFSET, regions=split.regions)
    signals, evidence = {}, {}
    for name in names:
        loaded = load_bundle(run_dir / "candidates" / name / "model.pt", spec.device)
        signals[name], found = score_candidate(loaded.model, probes, split.real)
        if found is not None:
            evidence[name] = found
    decisive, summary = True, ""
    if evidence:
        decisive, summary = real_decisive(
            signals, evidence, resamples=cfg.bootstrap_resamples, decisive_share=cfg.decisive_share, seed=spec.seed
        )
    # a decisive real-defect lead is the choice; the tie margin is for signals without a measured noise
    winner, reason = choose(signals, 0.0 if evidence and decisive else cfg.tie_margin, decisive)
    if summary:
        reason += (
            f" ({summary})" if decisive else f" (real defects not decisive: {summary}, {cfg.decisive_share:.0%} needed)"
        )
    return Choice(winner, reason, signals, bool(evidence) and decisive, probes)


def run_auto(spec: Any, run_dir: str | Path, *, progress: Any = None, should_stop: Any = None, resume: bool = False):
    from recon_core.runs import RunResult, RunSpec, _attach_log, execute_run

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _attach_log(run_dir)
    try:
        started = time.time()
        validate_auto_spec(spec)
        cfg = auto_config(spec)
        budget = total_budget(spec, cfg)
        save_json(run_dir / "spec.json", spec)
        split = _split(spec, cfg)
        log.info(
            "auto: candidates %s; %d held-out goods, %d real defects choose, %d train; budget %s",
            cfg.candidates,
            len(split.held_goods),
            len(split.validation_defects),
            len(split.training_defects),
            budget,
        )
        names = cfg.candidates
        planned = None
        if budget.iterations is not None:
            planned = {n: min(budget.iterations, cfg.quick_iterations) for n in cfg.quick}
            planned.update({n: budget.iterations for n in cfg.deep})
        tracker = _Progress(progress, names, planned, None if budget.minutes is None else budget.minutes * 60)
        results: dict[str, Any] = {}
        for index, name in enumerate(names):
            cdir = run_dir / "candidates" / name
            if (cdir / "model.pt").is_file() and (cdir / "metrics.json").is_file():  # done before a resume
                results[name] = load_json(cdir / "metrics.json")
                tracker.done(results[name].get("iterations", 0), results[name].get("train_seconds", 0.0))
                continue
            if (cdir / "spec.json").is_file():  # started before: its budget was fixed then
                cspec = RunSpec.from_dict(load_json(cdir / "spec.json"))
            else:
                if planned is not None:
                    share: dict[str, Any] = {"iterations": planned[name]}
                elif name in cfg.quick:
                    share = {"minutes": _quick_minutes(cfg, name, spec.preset, budget.minutes)}
                else:
                    spent = (time.time() - started) / 60
                    left = budget.minutes * (1 - CHOICE_RESERVE) - spent
                    deep_left = len([n for n in cfg.deep if n not in results])
                    share = {"minutes": max(MIN_DEEP_MINUTES, left / max(1, deep_left))}
                cspec = _candidate_spec(spec, cfg, name, split, share)
            log.info(
                "auto: training %s (%d/%d) with %s", name, index + 1, len(names), cspec.minutes or cspec.iterations
            )
            result = execute_run(
                cspec,
                cdir,
                progress=tracker.start(index),
                should_stop=should_stop,
                resume=resume and (cdir / "checkpoint.pt").is_file(),
            )
            results[name] = result.metrics
            tracker.done(result.metrics.get("iterations", 0), result.metrics.get("train_seconds", 0.0))

        choice = choose_trained(run_dir, spec, cfg, split, names)
        winner, reason, signals, probes = choice.winner, choice.reason, choice.signals, choice.probes
        log.info("auto: chose %s (%s)", winner, reason)
        tracker.finish()
        record = _record(cfg, names, results, signals, winner, reason, split, budget, probes, choice.real_decided)
        metrics = _assemble(run_dir, winner, record, started)
        return RunResult(str(run_dir / "model.pt"), metrics)
    finally:
        logging.getLogger("recon_core").removeHandler(handler)
        handler.close()


def _record(cfg, names, results, signals, winner, reason, split, budget, probes, real_decided) -> dict[str, Any]:
    test_keys = ("image_auroc", "pixel_auroc", "aupro", "synthetic")
    return {
        "winner": winner,
        "reason": reason,
        "signal": "real defects" if real_decided else "probe defects",
        "real_defects_not_decisive": split.real is not None and not real_decided,
        "budget": {"iterations": budget.iterations, "minutes": budget.minutes, "quick_share": cfg.quick_share},
        "held_out_goods": split.held_goods,
        "validation_defects": split.validation_defects,
        "training_defects": split.training_defects,
        "n_probe_defects": int(probes.labels.sum()),
        "candidates": [
            {
                "model": n,
                "role": "quick" if n in cfg.quick else "deep",
                "iterations": results[n].get("iterations"),
                "train_seconds": results[n].get("train_seconds"),
                "validation": signals[n],
                # the candidate's own evaluation on the test split: for reference, never used to choose
                "test": {k: results[n].get(k) for k in test_keys},
            }
            for n in names
        ],
    }


def _assemble(run_dir: Path, winner: str, record: dict[str, Any], started: float) -> dict[str, Any]:
    """The winner's files at the top of the run folder, plus the record of the choice."""
    src = run_dir / "candidates" / winner
    for name in WINNER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, run_dir / name)
    if (src / "heatmaps").is_dir():
        shutil.rmtree(run_dir / "heatmaps", ignore_errors=True)
        shutil.copytree(src / "heatmaps", run_dir / "heatmaps")
    data = load_json(src / "data.json")
    data["auto"] = {k: record[k] for k in ("held_out_goods", "validation_defects", "training_defects")}
    save_json(run_dir / "data.json", data)
    metrics = {**load_json(src / "metrics.json"), "auto": record, "wall_seconds": round(time.time() - started, 2)}
    metrics.pop("stage_iterations", None)  # the winner's plan: one candidate's schedule, not this run's (no replay)
    save_json(run_dir / CANDIDATES_FILE, record)
    save_json(run_dir / "metrics.json", metrics)
    for path in (run_dir / "candidates").glob("*/checkpoint.pt"):  # finished: the bundles are what is kept
        path.unlink(missing_ok=True)
    return metrics
