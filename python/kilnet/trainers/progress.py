"""fit's progress display: a live bar on a terminal, one line per epoch elsewhere."""
from __future__ import annotations

import sys
import time

__all__ = ["_Progress"]


class _Progress:
    """Training feedback per epoch. verbose=1 on a terminal: a live tqdm bar (steps, ETA, running
    loss and metrics; a plain refreshing line when tqdm is not installed). verbose=1 off a
    terminal (CI logs) and verbose=2: one line per epoch. verbose=0: nothing. steps=None: not
    known yet (a generator's first epoch)."""

    def __init__(self, epoch, epochs, steps, verbose):
        self.verbose, self.steps = verbose, steps
        self.live = verbose == 1 and sys.stdout.isatty()
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if not verbose:
            return
        if self.live:
            try:
                from tqdm import tqdm   # imported only when a live bar is wanted
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=steps, desc=f"Epoch {epoch + 1}/{epochs}", unit="step",
                                dynamic_ncols=True, leave=True, file=sys.stdout)
                return
        print(f"Epoch {epoch + 1}/{epochs}", flush=True)

    def due(self, step) -> bool:
        """Whether update() would redraw now (so the GPU loop only builds logs then)."""
        return self.live and (time.perf_counter() - self.last >= 0.1 or step == self.steps)

    def update(self, step, logs):
        if not self.live:
            return
        now = time.perf_counter()
        if now - self.last < 0.1 and step != self.steps:
            return
        self.last = now
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(_fmt(logs), refresh=True)
            return
        if self.steps is None:
            sys.stdout.write(f"\r{step}/Unknown - " + _fmt(logs))
        else:
            eta = (now - self.t0) / step * (self.steps - step)
            sys.stdout.write(f"\r{step}/{self.steps} - ETA: {eta:.0f}s - " + _fmt(logs))
        sys.stdout.flush()

    def finish(self, logs, seconds, steps=None):
        """steps: how many ran, where that differs from the total given (a stream)."""
        if steps is not None:
            self.steps = steps
        if not self.verbose:
            return
        per_step = seconds / max(self.steps, 1) * 1e3
        msg = f"{self.steps}/{self.steps} - {seconds:.1f}s {per_step:.0f}ms/step - " + _fmt(logs)
        if self.bar is not None:
            self.bar.n = self.steps
            self.bar.set_postfix_str(_fmt(logs), refresh=True)
            self.bar.close()
            return
        print(("\r" if self.live else "") + msg, flush=True)


def _fmt(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
