"""Sampling that makes a run reproducible whatever its loader: every sample is augmented under its own seed, a
function of the run's seed and the sample's place in the stream (not of the loader's workers, their number or their
history), so that a resumed run draws what the uninterrupted one drew.

- ``SampleSeeds`` + ``Seeded``: an epoch sampler's indices paired with per-sample seeds (pretraining);
- ``IterationSampler``: the samples of iterations ``[start, total)`` of an iteration-based run (segmentation).
"""
from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


class SampleSeeds(torch.utils.data.Sampler):
    """Wraps a sampler to yield ``(index, seed)``: each sample is augmented under its own seed, a
    function of (run seed, epoch, rank, position in the epoch).

    So the augmentations do not depend on the loader's workers: their number, or their RNG history
    (persistent workers carry it from epoch to epoch; a resumed run starts fresh ones). ``workers``
    stays a resource key and a resumed run draws what the uninterrupted one drew.
    """

    def __init__(self, sampler, *, seed: int, rank: int = 0):
        self.sampler, self.seed, self.rank, self.epoch = sampler, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        entropy = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(2, np.uint64)[0]
        g = torch.Generator().manual_seed(int(entropy) >> 1)
        seeds = torch.randint(0, 2**62, (len(self.sampler),), generator=g).tolist()
        return zip(self.sampler, seeds)


class Seeded:
    """A map-style dataset read with ``(index, seed)`` items (``SampleSeeds``): ``dataset[index]``
    under that seed (torch's CPU generator, ``random`` and numpy's global RNG, as torchvision's and
    timm's transforms use them), the process's own RNG state put back afterwards."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with seeded(seed):
            return self.dataset[index]


@contextmanager
def seeded(seed: int):
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.random.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stays untouched
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


class IterationSampler(torch.utils.data.Sampler):
    """``(index, seed)`` for each sample of iterations ``[start, total)`` on this rank.

    The stream is a function of (seed, iteration) only: epochs are seeded permutations and
    every sample's augmentation seed is derived from its place in the stream.
    """

    def __init__(self, n: int, batch_size: int, total: int, *, start: int = 0, seed: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch, self.total, self.start, self.seed = n, batch_size, total, start, seed
        self.per_rank, self.rank = batch_size // world, rank

    def _perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self):
        epoch, perm = -1, None
        for it in range(self.start, self.total):
            for j in range(self.rank * self.per_rank, (self.rank + 1) * self.per_rank):
                e, pos = divmod(it * self.batch + j, self.n)
                if e != epoch:
                    epoch, perm = e, self._perm(e)
                yield int(perm[pos]), (self.seed * 1_000_003 + it) * 4099 + j

    def __len__(self) -> int:
        return (self.total - self.start) * self.per_rank
