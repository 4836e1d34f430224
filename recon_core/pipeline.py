"""Training batches made ahead of the step: sampling good images and synthesising their defects, in data workers.

Every batch is a pure function of (run seed, stage, iteration): `iteration_rngs` derives two independent generators
from (seed, iteration), one for the batch (image choice + the stage's synthesis), one for the step (anything a model
still draws while stepping). So results do not depend on the number of workers or on their timing, and a resumed
run makes exactly the batches it would have made.

`workers=0` makes each batch in the training process when the step asks for it (the right choice on a CPU, where
the workers would take cores from the step: notes/gpu.md). With workers, a torch DataLoader (persistent workers, a
sampler of (stage, iteration) keys, pinned memory on CUDA) keeps 2 batches per worker in flight; the copies to the
device are non-blocking. A stage's synthesis is `TrainingStage.synth`, a picklable callable
`(images (B, H, W, 3) float32, rng) -> {name: array}` (e.g. DRAEM's DefectGenerator.augment), so it runs in the
workers; the step then gets {"images": (B, 3, H, W), **those arrays} as tensors on the device.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

BatchSynth = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]
PREFETCH_PER_WORKER = 2
MAX_AUTO_WORKERS = 4


def iteration_rngs(seed: int, iteration: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(batch rng, step rng) of a 0-based global iteration: independent streams that depend on nothing else."""
    batch, step = np.random.SeedSequence([int(seed), int(iteration)]).spawn(2)
    return np.random.default_rng(batch), np.random.default_rng(step)


def default_workers(device: torch.device) -> int:
    """0 on a CPU (measured: workers only take cores from the step, notes/gpu.md); on an accelerator the cores
    left over, at most MAX_AUTO_WORKERS. RECON_DATA_WORKERS overrides."""
    env = os.environ.get("RECON_DATA_WORKERS")
    if env:
        return max(0, int(env))
    if device.type == "cpu":
        return 0
    return max(0, min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0)) - 1))


class BatchMaker:
    """Makes the batch of (stage, iteration). Picklable (it is sent to the workers): images, the seed and the
    stages' synthesis callables only."""

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, synths: list[BatchSynth | None]) -> None:
        self.images = images
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.synths = synths

    def __call__(self, stage: int, iteration: int) -> dict[str, torch.Tensor]:
        rng, _ = iteration_rngs(self.seed, iteration)
        n = len(self.images)
        idx = rng.choice(n, size=self.batch_size, replace=n < self.batch_size)
        clean = np.ascontiguousarray(self.images[np.sort(idx)], dtype=np.float32)
        out = {"images": torch.from_numpy(clean).permute(0, 3, 1, 2).contiguous()}
        synth = self.synths[stage]
        if synth is not None:
            for name, value in synth(clean, rng).items():
                out[name] = torch.from_numpy(np.ascontiguousarray(value))
        out["key"] = torch.tensor([stage, iteration])
        return out


class _Keys(Sampler):
    """(stage, iteration), (stage, iteration + 1), ... from the position set before each `iter(loader)`."""

    def __init__(self) -> None:
        self.stage, self.start = 0, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        it = self.start
        while True:
            yield self.stage, it
            it += 1


class _Batches(Dataset):
    def __init__(self, maker: BatchMaker) -> None:
        self.maker = maker

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.maker(*key)


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers start from a clean forkserver, not a fork of the training process: a fork of a process whose OpenCV /
    OpenMP thread pools have run deadlocks in the child (seen with DefectGenerator). The server imports the
    synthesis code once, so later workers start in milliseconds."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["recon_core.pipeline", "recon_core.synth", "recon_core.models.draem"])
    return ctx


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker; torch is set to 1 thread in workers by the DataLoader


class BatchPipeline:
    """`get(stage, iteration)` -> the batch on the device, made ahead by workers when there are any. Records the
    seconds the caller waited for data (`wait_s`), to show whether the step or the data is the bottleneck."""

    def __init__(self, maker: BatchMaker, device: torch.device, workers: int, channels_last: bool = False) -> None:
        self.maker = maker
        self.device = device
        self.workers = int(workers)
        self.channels_last = channels_last
        self.wait_s = 0.0
        self.batches = 0
        self._loader: DataLoader | None = None
        self._keys = _Keys()
        self._iter: Iterator[dict[str, torch.Tensor]] | None = None
        self._next: tuple[int, int] | None = None  # the key the running iterator yields next
        if self.workers > 0:
            self._loader = DataLoader(
                _Batches(maker),
                batch_size=None,
                sampler=self._keys,
                num_workers=self.workers,
                persistent_workers=True,
                prefetch_factor=PREFETCH_PER_WORKER,
                pin_memory=device.type == "cuda",
                worker_init_fn=_worker_init,
                multiprocessing_context=_worker_context(),
            )

    def get(self, stage: int, iteration: int) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        if self._loader is None:
            batch = self.maker(stage, iteration)
        else:
            if self._next != (stage, iteration):  # first call, a new stage or a jump: restart the stream here
                self._keys.stage, self._keys.start = stage, iteration
                self._iter = iter(self._loader)
            assert self._iter is not None
            batch = next(self._iter)
            got = (int(batch["key"][0]), int(batch["key"][1]))
            if got != (stage, iteration):  # never expected: the stream is ordered
                raise RuntimeError(f"data pipeline out of order: got {got}, expected {(stage, iteration)}")
            self._next = (stage, iteration + 1)
        out = {}
        for name, value in batch.items():
            if name == "key":
                continue
            value = value.to(self.device, non_blocking=True)
            if self.channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            out[name] = value
        self.wait_s += time.perf_counter() - t0
        self.batches += 1
        return out

    def close(self) -> None:
        """Stop the workers (persistent workers otherwise live as long as the loader)."""
        self._iter = None
        if self._loader is not None:
            it = getattr(self._loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
            self._loader = None


__all__ = ["BatchMaker", "BatchPipeline", "BatchSynth", "default_workers", "iteration_rngs"]
