"""The training loop with a tiny model: schedule, budgets, resume, checkpoints, cancel, failures."""

from __future__ import annotations

import csv
import errno
import shutil

import numpy as np
import pytest
import torch
from tiny_model import TinyConfig, TinyModel, tiny_images

from recon_core import train as train_mod
from recon_core.bundle import atomic_torch_save, load_bundle, read_bundle_dict
from recon_core.errors import ConfigError, TrainingCancelled, TrainingError
from recon_core.models.base import Budget, TrainingStage
from recon_core.stage_plan import format_stage_plan, parse_stage_plan
from recon_core.train import fit, lr_factor, stage_lengths

pytestmark = pytest.mark.usefixtures("tiny_model_env")


def weights(model: TinyModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def test_stage_lengths_split_by_weight_and_sum_to_total():
    stages = [TrainingStage(n, w, lambda *a: {}, []) for n, w in (("a", 3.0), ("b", 1.0))]
    assert stage_lengths(40, stages) == [30, 10]
    assert sum(stage_lengths(7, stages)) == 7
    assert stage_lengths(2, stages) == [1, 1]  # every stage runs when the budget allows
    assert lr_factor(79, 100, (0.8, 0.9)) == 1.0
    assert lr_factor(80, 100, (0.8, 0.9)) == pytest.approx(0.1)
    assert lr_factor(90, 100, (0.8, 0.9)) == pytest.approx(0.01)


def test_lr_drops_at_80_and_90_percent():
    model = TinyModel(TinyConfig(lr=1e-2))
    summary = fit(model, tiny_images(), None, Budget(iterations=50))
    lrs = [lr for _, lr in model.lr_trace]
    assert summary.iterations == summary.total_iterations == 50 == len(lrs)
    assert lrs[:40] == pytest.approx([1e-2] * 40)
    assert lrs[40:45] == pytest.approx([1e-3] * 5)
    assert lrs[45:] == pytest.approx([1e-4] * 5)
    assert model.finished  # finish_training was called
    assert not any(net.training for net in model.networks().values())


def test_two_stages_run_in_order_with_their_own_schedule():
    model = TinyModel(TinyConfig(lr=1e-2, two_stages=True))
    summary = fit(model, tiny_images(), None, Budget(iterations=40))
    names = [n for n, _ in model.lr_trace]
    assert names == ["main"] * 30 + ["head"] * 10
    head = [lr for n, lr in model.lr_trace if n == "head"]
    assert head[:5] == pytest.approx([2e-2] * 5) and head[5:] == pytest.approx([2e-3] * 5)  # drop at 0.5
    assert summary.stage_iterations == {"main": 30, "head": 10}


def test_progress_reports_fields_and_the_end():
    reports = []
    fit(TinyModel(TinyConfig()), tiny_images(), None, Budget(iterations=25), progress=reports.append, progress_every=5)
    assert [r.iteration for r in reports] == [1, 5, 10, 15, 20, 25, 25]
    last = reports[-1]
    assert last.total_iterations == 25 and last.eta_s == 0 and last.images_per_s > 0
    assert set(last.losses) == {"mse", "total"} and last.lr > 0


def test_minutes_budget_calibrates_and_fixes_total(tmp_path):
    model = TinyModel(TinyConfig(step_sleep=0.05))
    summary = fit(model, tiny_images(), None, Budget(minutes=0.04), checkpoint_path=tmp_path / "c.pt")
    # real clock (the fake-clock tests below check the numbers): 2.4 s budget at >= 0.05 s/iteration
    assert 2 <= summary.total_iterations <= 48
    assert summary.iterations == summary.total_iterations or summary.stopped_by_time
    assert summary.seconds < 2.4 + 1.0  # the wall-clock limit is respected (slack: other processes share the CPU)
    ts = read_bundle_dict(tmp_path / "c.pt")["training_state"]
    assert ts["total_iterations"] == summary.total_iterations
    # the schedule follows the calibrated total: lr x 0.1 from 80 %, x 0.01 from 90 % of it
    total = summary.total_iterations
    expected = [model.cfg.lr * lr_factor(i, total, (0.8, 0.9)) for i in range(summary.iterations)]
    assert [lr for _, lr in model.lr_trace] == pytest.approx(expected)


class FakeClock:
    """Replaces time.perf_counter inside train.py: each step costs what the test says (deterministic timing)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def clocked(monkeypatch, cost) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(train_mod, "time", clock)
    real = TinyModel._step

    def step(self, images, rng):
        clock.now += cost(self.calls)
        return real(self, images, rng)

    monkeypatch.setattr(TinyModel, "_step", step)
    return clock


def test_minutes_budget_calibration_is_exact_with_a_steady_machine(monkeypatch):
    clocked(monkeypatch, lambda calls: 2.0)
    model = TinyModel(TinyConfig())
    summary = fit(model, tiny_images(), None, Budget(minutes=1))
    # 60 s x 0.95 safety / 2 s per iteration = 28 iterations, all of them run, within the budget
    assert summary.total_iterations == 28 == summary.iterations and not summary.stopped_by_time
    assert summary.seconds == pytest.approx(56.0)


def test_minutes_budget_refines_when_the_machine_speeds_up(monkeypatch):
    clocked(monkeypatch, lambda calls: 8.0 if calls < 3 else 2.0)  # slow start (warm-up, a busy neighbour)
    model = TinyModel(TinyConfig())
    summary = fit(model, tiny_images(), None, Budget(minutes=1))
    # the first estimate (8 s/it) plans 7 iterations; refined on later windows the budget is used: 19
    assert summary.total_iterations == 19 == summary.iterations
    assert 50 <= summary.seconds <= 60
    expected = [model.cfg.lr * lr_factor(i, summary.total_iterations, (0.8, 0.9)) for i in range(summary.iterations)]
    assert [lr for _, lr in model.lr_trace] == pytest.approx(expected)  # one consistent schedule


def test_minutes_budget_stops_at_the_deadline_when_the_machine_slows_down(monkeypatch, tmp_path):
    clocked(monkeypatch, lambda calls: 2.0 if calls < 22 else 6.0)  # slows down after the last refinement
    model = TinyModel(TinyConfig())
    ckpt = tmp_path / "c.pt"
    summary = fit(model, tiny_images(), None, Budget(minutes=1), checkpoint_path=ckpt)
    assert summary.stopped_by_time and summary.iterations == 24 and summary.total_iterations == 28
    assert summary.seconds == pytest.approx(56.0) and model.finished  # never past the 60 s limit
    # resuming a run whose budget is spent does not start another (overrunning) iteration
    again = TinyModel(TinyConfig())
    summary = fit(again, tiny_images(), None, Budget(minutes=1), checkpoint_path=ckpt, resume=True)
    assert summary.iterations == 24 and summary.stopped_by_time and again.calls == 0 and again.finished


def straight_and_cancelled(ckpt, **fit_kwargs) -> tuple[TinyModel, TinyModel]:
    """A two-stage 30-iteration run, and the same run (same initial weights) cancelled at iteration 13 with its
    checkpoint in `ckpt`."""
    images = tiny_images()
    torch.manual_seed(0)
    straight = TinyModel(TinyConfig(two_stages=True))
    fit(straight, images, None, Budget(iterations=30), seed=3)
    torch.manual_seed(0)
    first = TinyModel(TinyConfig(two_stages=True))
    with pytest.raises(TrainingCancelled):
        fit(
            first,
            images,
            None,
            Budget(iterations=30),
            seed=3,
            checkpoint_path=ckpt,
            should_stop=lambda: first.calls >= 13,
            **fit_kwargs,
        )
    return straight, first


def test_resume_continues_the_schedule_exactly(tmp_path):
    images, ckpt, losses = tiny_images(), tmp_path / "c.pt", tmp_path / "losses.csv"
    straight, first = straight_and_cancelled(ckpt, checkpoint_every=5, loss_log_path=losses)
    assert read_bundle_dict(ckpt)["training_state"]["iteration"] == 13
    second = TinyModel(TinyConfig(two_stages=True))
    summary = fit(
        second, images, None, Budget(iterations=30), seed=3, checkpoint_path=ckpt, loss_log_path=losses, resume=True
    )
    assert summary.iterations == summary.total_iterations == 30
    assert [lr for _, lr in first.lr_trace] + [lr for _, lr in second.lr_trace] == [lr for _, lr in straight.lr_trace]
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(second)[k]), k  # bit-identical to the uninterrupted run
    with open(losses) as fh:
        iters = sorted({int(r["iteration"]) for r in csv.DictReader(fh)})
    assert iters == list(range(1, 31))


def clocked_stages(monkeypatch, main_cost, head_cost) -> dict[str, float]:
    """Two-stage tiny model on the fake clock: `main_cost(i)` / `head_cost(i)` seconds for each stage's i-th step
    (0-based). Returns the seconds spent in each stage, filled in as the steps run."""
    clock, spent = FakeClock(), {"main": 0.0, "head": 0.0}
    monkeypatch.setattr(train_mod, "time", clock)
    real_main, real_head = TinyModel._step, TinyModel._step2

    def charge(stage: str, cost: float) -> None:
        clock.now += cost
        spent[stage] += cost

    def main(self, images, rng):
        charge("main", main_cost(self.calls))
        return real_main(self, images, rng)

    def head(self, images, rng):
        charge("head", head_cost(sum(name == "head" for name, _ in self.lr_trace)))
        return real_head(self, images, rng)

    monkeypatch.setattr(TinyModel, "_step", main)
    monkeypatch.setattr(TinyModel, "_step2", head)
    return spent


def assert_complete_schedules(model: TinyModel, summary) -> None:
    """Each stage ran its planned length with the lr drops at its own fractions (main 0.8/0.9, head 0.5)."""
    main = [lr for name, lr in model.lr_trace if name == "main"]
    head = [lr for name, lr in model.lr_trace if name == "head"]
    n_main, n_head = summary.stage_iterations["main"], summary.stage_iterations["head"]
    assert len(main) == n_main and len(head) == n_head and not summary.stopped_by_time
    assert main == pytest.approx([model.cfg.lr * lr_factor(i, n_main, (0.8, 0.9)) for i in range(n_main)])
    assert head == pytest.approx([2 * model.cfg.lr * lr_factor(i, n_head, (0.5,)) for i in range(n_head)])


def test_minutes_budget_calibrates_each_stage_on_its_own_iterations(monkeypatch):
    spent = clocked_stages(monkeypatch, lambda i: 1.0, lambda i: 3.0)  # stage 2 costs 3x per iteration
    model = TinyModel(TinyConfig(two_stages=True))  # weights main 3 : head 1
    reports = []
    summary = fit(model, tiny_images(), None, Budget(minutes=2), progress=reports.append, progress_every=5)
    # 114 s planned (95 %): main's slot 85.5 s at 1 s/it -> 85; head gets the 29 s left at 3 s/it -> 9
    # (calibrating on main alone planned 86 + 28, and the deadline cut head at 11 of 28, before its lr drop)
    assert summary.stage_iterations == {"main": 85, "head": 9} and summary.total_iterations == 94
    assert_complete_schedules(model, summary)
    assert spent["main"] / summary.seconds == pytest.approx(0.75, abs=0.02)
    assert spent["head"] / summary.seconds == pytest.approx(0.25, abs=0.02)
    assert summary.seconds == pytest.approx(112.0)  # within the 114 s planned (120 s limit)
    # the total is an estimate until each stage is planned at its start
    # (main's reports estimate head's 28.5 s at main's rate: 85 + 28), exact from then on
    assert {r.total_iterations for r in reports if r.stage == "main" and r.iteration >= 5} == {113}
    assert {r.total_iterations for r in reports if r.stage == "head"} == {94}
    assert reports[-2].iteration == 90 and reports[-2].eta_s == pytest.approx(4 * 3.0)  # at head's rate
    assert reports[-1].eta_s == 0


def test_minutes_budget_replans_a_stage_that_slows_down_before_its_lr_drop(monkeypatch):
    clocked_stages(monkeypatch, lambda i: 1.0, lambda i: 3.0 if i < 3 else 4.0)
    model = TinyModel(TinyConfig(two_stages=True))
    summary = fit(model, tiny_images(), None, Budget(minutes=4))
    # head's slot is 57 s: planned 19 at 3 s/it, refined to 15 on the slower windows before its drop at 50 %
    assert summary.stage_iterations == {"main": 171, "head": 15}
    assert_complete_schedules(model, summary)
    assert summary.seconds <= 240 * 0.95


def test_minutes_budget_stops_at_the_deadline_when_a_later_stage_slows_down(monkeypatch):
    clocked_stages(monkeypatch, lambda i: 1.0, lambda i: 3.0 if i < 10 else 9.0)  # after head's lr drop: too late
    model = TinyModel(TinyConfig(two_stages=True))
    summary = fit(model, tiny_images(), None, Budget(minutes=4))
    assert summary.stopped_by_time and summary.stage_iterations == {"main": 171, "head": 19}
    assert summary.iterations < summary.total_iterations == 190
    assert summary.seconds <= 240.0 and model.finished  # the wall-clock limit is still a limit


def test_resume_in_the_middle_of_a_minutes_stage_is_exact(tmp_path, monkeypatch):
    images, ckpt = tiny_images(), tmp_path / "c.pt"
    speed = {"head": 3.0}
    clocked_stages(monkeypatch, lambda i: 1.0, lambda i: speed["head"])
    torch.manual_seed(0)
    straight = TinyModel(TinyConfig(two_stages=True))
    expected = fit(straight, images, None, Budget(minutes=2), seed=3)

    torch.manual_seed(0)
    first = TinyModel(TinyConfig(two_stages=True))

    def in_head() -> bool:  # cancel after 5 of head's 9 iterations: its length is planned, not final yet
        return sum(name == "head" for name, _ in first.lr_trace) >= 5

    with pytest.raises(TrainingCancelled, match="iteration 90/94"):
        fit(first, images, None, Budget(minutes=2), seed=3, checkpoint_path=ckpt, should_stop=in_head)
    ts = read_bundle_dict(ckpt)["training_state"]
    assert ts["stage_lengths"] == [85, 9] and ts["stage"] == "head" and ts["elapsed_s"] == pytest.approx(100.0)
    shutil.copy(ckpt, tmp_path / "copy.pt")
    second = TinyModel(TinyConfig(two_stages=True))
    summary = fit(second, images, None, Budget(minutes=2), seed=3, checkpoint_path=ckpt, resume=True)
    assert summary.stage_iterations == expected.stage_iterations and summary.seconds == pytest.approx(expected.seconds)
    assert first.lr_trace + second.lr_trace == straight.lr_trace
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(second)[k]), k  # bit-identical to the uninterrupted run
    speed["head"] = 1.0  # a faster machine on resume: the planned stage is not re-planned
    again = fit(
        TinyModel(TinyConfig(two_stages=True)),
        images,
        None,
        Budget(minutes=2),
        seed=3,
        checkpoint_path=tmp_path / "copy.pt",
        resume=True,
    )
    assert again.stage_iterations == {"main": 85, "head": 9} and again.iterations == 94


def test_checkpoint_without_a_per_stage_plan_still_resumes(tmp_path):
    """Checkpoints written before per-stage plans hold only total_iterations; its split by weight is the plan."""
    images, ckpt = tiny_images(), tmp_path / "c.pt"
    straight, _ = straight_and_cancelled(ckpt)
    raw = read_bundle_dict(ckpt)
    for key in ("stage_lengths", "stage_slot"):
        del raw["training_state"][key]
    atomic_torch_save(raw, ckpt)
    second = TinyModel(TinyConfig(two_stages=True))
    # resumed under a minutes budget (as old minutes runs were): the saved total is followed, not re-planned
    summary = fit(second, images, None, Budget(minutes=60), seed=3, checkpoint_path=ckpt, resume=True)
    assert summary.stage_iterations == {"main": 23, "head": 7} and summary.iterations == 30
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(second)[k]), k


def test_resume_of_a_minutes_run_keeps_its_total(tmp_path, monkeypatch):
    speed = {"cost": 2.0}
    clocked(monkeypatch, lambda calls: speed["cost"])
    ckpt = tmp_path / "c.pt"
    model = TinyModel(TinyConfig())
    with pytest.raises(TrainingCancelled):
        fit(model, tiny_images(), None, Budget(minutes=1), checkpoint_path=ckpt, should_stop=lambda: model.calls >= 10)
    ts = read_bundle_dict(ckpt)["training_state"]
    assert ts["total_iterations"] == 28 and ts["elapsed_s"] == pytest.approx(20.0)
    speed["cost"] = 0.5  # the machine is faster now: the schedule must NOT be recalibrated
    again = TinyModel(TinyConfig())
    summary = fit(again, tiny_images(), None, Budget(minutes=1), checkpoint_path=ckpt, resume=True)
    assert summary.total_iterations == 28 == summary.iterations
    assert summary.seconds == pytest.approx(20.0 + 18 * 0.5)  # time of both attempts counts against the budget


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    summary = fit(
        TinyModel(TinyConfig()),
        tiny_images(),
        None,
        Budget(iterations=5),
        checkpoint_path=tmp_path / "c.pt",
        resume=True,
    )
    assert summary.iterations == 5


def test_checkpoint_every_n_and_at_the_end(tmp_path, monkeypatch):
    seen = []
    real = train_mod._write_checkpoint

    def spy(path, model, synth, ts):
        seen.append(ts["iteration"])
        real(path, model, synth, ts)

    monkeypatch.setattr(train_mod, "_write_checkpoint", spy)
    fit(
        TinyModel(TinyConfig()),
        tiny_images(),
        None,
        Budget(iterations=23),
        checkpoint_path=tmp_path / "c.pt",
        checkpoint_every=10,
    )
    assert seen == [10, 20, 23]
    loaded = load_bundle(tmp_path / "c.pt", "cpu")
    assert loaded.training_state["iteration"] == 23 and loaded.model.name == "tiny"
    assert isinstance(loaded.training_state["optimizers"][0][0]["state"], dict)


def test_cancel_writes_a_checkpoint_then_raises(tmp_path):
    model = TinyModel(TinyConfig())
    with pytest.raises(TrainingCancelled, match="iteration 4/20"):
        fit(
            model,
            tiny_images(),
            None,
            Budget(iterations=20),
            checkpoint_path=tmp_path / "c.pt",
            checkpoint_every=100,
            should_stop=lambda: model.calls >= 4,
        )
    assert read_bundle_dict(tmp_path / "c.pt")["training_state"]["iteration"] == 4


def test_nan_loss_is_a_training_error():
    with pytest.raises(TrainingError, match=r"loss became NaN at iteration 3 \(lr too high\?\)"):
        fit(TinyModel(TinyConfig(nan_at=3)), tiny_images(), None, Budget(iterations=10))


def test_out_of_memory_becomes_advice(monkeypatch):
    model = TinyModel(TinyConfig())

    def boom(*_):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "_step", boom)
    with pytest.raises(TrainingError, match="smaller batch size or a smaller preset"):
        fit(model, tiny_images(), None, Budget(iterations=3))


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "c.pt"
    model = TinyModel(TinyConfig())
    fit(model, tiny_images(), None, Budget(iterations=4), checkpoint_path=ckpt)
    before = ckpt.read_bytes()
    real_save = torch.save

    def full(obj, fh, *a, **k):
        fh.write(b"partial")  # a half-written file, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TrainingError, match="disk full"):
        fit(TinyModel(TinyConfig()), tiny_images(), None, Budget(iterations=4), checkpoint_path=ckpt)
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.read_bytes() == before  # intact and loadable
    assert load_bundle(ckpt, "cpu").training_state["iteration"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_bad_images_are_refused():
    with pytest.raises(TrainingError, match="expects 32x32"):
        fit(TinyModel(TinyConfig()), tiny_images(size=16), None, Budget(iterations=2))
    with pytest.raises(TrainingError):
        fit(TinyModel(TinyConfig()), np.zeros((0, 32, 32, 3), np.float32), None, Budget(iterations=2))


def test_a_minutes_run_replays_exactly_from_its_stage_plan_on_a_slower_machine(monkeypatch):
    """A minutes budget plans each stage on time, so a slower (busier) machine trains fewer iterations in the same
    minutes, and the total split by weight is another schedule: the recorded per-stage plan replays the run iteration
    for iteration (the benchmarks' rule: a busy machine replays the iterations of a quiet one)."""
    images, slow = tiny_images(), {"factor": 1.0}
    clocked_stages(monkeypatch, lambda i: 1.0 * slow["factor"], lambda i: 3.0 * slow["factor"])

    def run(budget: Budget) -> tuple[TinyModel, object]:
        torch.manual_seed(0)
        model = TinyModel(TinyConfig(two_stages=True))
        return model, fit(model, images, None, budget, seed=3)

    timed, recorded = run(Budget(minutes=2))
    assert recorded.stage_iterations == {"main": 85, "head": 9}
    slow["factor"] = 3.0
    _, busier = run(Budget(minutes=2))
    assert busier.iterations < recorded.iterations  # the same minutes, fewer iterations
    _, by_total = run(Budget(iterations=recorded.iterations))
    assert by_total.stage_iterations != recorded.stage_iterations  # split by weight: another schedule
    replayed, summary = run(Budget(stage_iterations=recorded.stage_iterations))
    assert summary.stage_iterations == recorded.stage_iterations and summary.iterations == recorded.iterations
    assert replayed.lr_trace == timed.lr_trace
    for k, v in weights(timed).items():
        assert torch.equal(v, weights(replayed)[k]), k


def test_a_replay_stops_where_a_run_cut_short_by_its_deadline_stopped(monkeypatch):
    images = tiny_images()
    clocked_stages(monkeypatch, lambda i: 1.0, lambda i: 3.0 if i < 10 else 9.0)
    torch.manual_seed(0)
    timed = TinyModel(TinyConfig(two_stages=True))
    recorded = fit(timed, images, None, Budget(minutes=4), seed=3)
    assert recorded.stopped_by_time and recorded.iterations < sum(recorded.stage_iterations.values())
    torch.manual_seed(0)
    replayed = TinyModel(TinyConfig(two_stages=True))
    budget = Budget(stage_iterations=recorded.stage_iterations, iterations=recorded.iterations)
    reports = []
    summary = fit(replayed, images, None, budget, seed=3, progress=reports.append, progress_every=5)
    assert summary.iterations == recorded.iterations and replayed.finished
    assert reports[-1].total_iterations == recorded.iterations  # progress counts to where the replay stops
    assert replayed.lr_trace == timed.lr_trace
    for k, v in weights(timed).items():
        assert torch.equal(v, weights(replayed)[k]), k


def test_replay_budgets_refuse_what_cannot_be_replayed():
    with pytest.raises(ConfigError, match="without minutes"):
        Budget(minutes=1, stage_iterations={"main": 3})
    with pytest.raises(ConfigError, match="1 to the plan's 4"):
        Budget(iterations=5, stage_iterations={"main": 3, "head": 1})
    with pytest.raises(ConfigError, match="whole number"):
        Budget(stage_iterations={"main": -1})
    with pytest.raises(ConfigError, match="no iterations"):
        Budget(stage_iterations={"main": 0})
    with pytest.raises(ConfigError, match="tiny trains main, head"):
        fit(TinyModel(TinyConfig(two_stages=True)), tiny_images(), None, Budget(stage_iterations={"vq": 3}))
    plan = parse_stage_plan("vq=490, dsr=350 upsampling=175")
    assert plan == {"vq": 490, "dsr": 350, "upsampling": 175}
    assert format_stage_plan(plan) == "vq=490,dsr=350,upsampling=175"
    for bad in ("vq", "vq=x", "vq=1,vq=2", "=3", "vq=-1", ""):
        with pytest.raises(ConfigError):
            parse_stage_plan(bad)
