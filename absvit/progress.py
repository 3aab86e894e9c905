"""Progress lines of long loops, as DeiT's / timm's / MMSegmentation's, flushed as they happen (a
SLURM job log is a file; tqdm switches itself off there)::

    Epoch: [3/300] [ 200/1251]  eta: 0:04:12  lr: 0.000500  loss: 3.2100 (3.3500)  img/s: 1210 (605/proc)  data: 2%  time: 0.402  max mem: 15123MB

A line comes every N steps, N chosen so that one comes about every ``every_s`` seconds, and at the
last step; the numbers are averaged over all processes. The loss may be a device tensor: it is
summed on the device and read only when a line is printed (and the device is waited for only
then, and after the first step), so a fast GPU loop never stalls for its progress lines. torch
is imported only for that, to reduce across processes and to read GPU memory, so that data-prep
jobs start without it.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from absvit.formats import hms

if TYPE_CHECKING:
    from absvit.runtime import DistInfo

LOG_EVERY_S = 30.0


class Progress:
    """Progress lines of one loop over ``total`` steps (an epoch, a fine-tuning run, an evaluation).

    ``step(...)`` after each step with its numbers; ``data`` is the time spent waiting for the
    batch, ``images`` the batch size of this process. ``summary()`` gives the averages of the whole
    loop (over all processes), for the epoch line and MLflow.
    """

    def __init__(self, header: str, total: int, *, start: int = 0, every_s: float = LOG_EVERY_S,
                 dist: DistInfo | None = None, device=None, window: int = 20):
        # dist None: a single process
        self.header, self.total, self.done, self.every_s = header, total, start, every_s
        self.world, self.is_main = (dist.world_size, dist.is_main) if dist else (1, True)
        self.device, self.window = device, window
        self.every_n, self.recent = 1, []
        self.sums = dict(loss=0.0, steps=0, images=0, data=0.0, time=0.0)
        self.t0 = self.last = time.perf_counter()

    def _reduced(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def step(self, *, images: int, data: float, loss=None, lr: float | None = None) -> None:
        """``loss``: a float, or a device tensor (summed there; no host sync unless a line is printed)."""
        self.done += 1
        s = self.sums
        if s["steps"] == 0 or self.done % self.every_n == 0 or self.done == self.total:
            self._sync()  # the first step's time decides N; a line's numbers include the queued device work
        now = time.perf_counter()
        s["steps"] += 1
        s["images"] += images
        s["data"] += data
        s["time"] += now - self.last
        self.last = now
        if loss is not None:
            if hasattr(loss, "detach"):
                loss = loss.detach().double()  # float64 sum, as Python's sum of .item() floats
            s["loss"] = s["loss"] + loss
            self.recent = (self.recent + [loss])[-self.window:]
        if s["steps"] == 1:  # the first step says whether this loop is long enough for lines on the way
            first = self._reduced([s["time"]])[0] / self.world  # every process must decide alike
            self.every_n = self._every_n(first) if first * (self.total - self.done) > self.every_s else self.total
        if self.done % self.every_n == 0 or self.done == self.total:
            self._print(lr)

    def _sync(self) -> None:
        if getattr(self.device, "type", None) == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _every_n(self, step_s: float) -> int:
        """Steps until the next line, about every_s from now."""
        return max(1, round(self.every_s / max(step_s, 1e-9)))

    def summary(self) -> dict:
        """Averages over the loop so far and over all processes (a collective call with several)."""
        s = self.sums
        steps, images, data, busy, loss = self._reduced([s["steps"], s["images"], s["data"], s["time"], float(s["loss"])])
        world = self.world
        wall = busy / world
        return {"loss": loss / max(steps, 1), "images_per_s": images / max(wall, 1e-9),
                "data_wait": data / max(busy, 1e-9), "seconds": time.perf_counter() - self.t0,
                "step_s": busy / max(steps, 1)}

    def _print(self, lr) -> None:
        window = float(sum(self.recent)) / max(len(self.recent), 1)
        avg = self.summary()
        window = self._reduced([window])[0] / self.world
        self.every_n = self._every_n(avg["step_s"])  # reduced numbers: every process computes the same N
        if not self.is_main:
            return
        width = len(str(self.total))
        parts = [f"{self.header} [{self.done:>{width}}/{self.total}]",
                 f"eta: {hms(avg['step_s'] * (self.total - self.done))}"]
        if lr is not None:
            parts.append(f"lr: {lr:.6f}")
        if self.recent:
            parts.append(f"loss: {window:.4f} ({avg['loss']:.4f})")
        world = self.world
        parts += [f"img/s: {avg['images_per_s']:.0f} ({avg['images_per_s'] / world:.0f}/proc)",
                  f"data: {100 * avg['data_wait']:.0f}%", f"time: {avg['step_s']:.3f}"]
        if getattr(self.device, "type", None) == "cuda":
            import torch

            parts.append(f"max mem: {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f}MB")
        print("  ".join(parts), flush=True)


def timed(loader):
    """``(seconds waited for the batch, batch)`` for each batch of ``loader``."""
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield time.perf_counter() - t, batch
