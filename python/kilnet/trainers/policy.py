"""What fit's epoch loop asks of the process it runs in: OneProcess here, one rank of an MPI job
in kilnet.distributed (_Rank overrides each method)."""
from __future__ import annotations

import numpy as np

__all__ = ["OneProcess", "verbosity"]


class OneProcess:
    """Where fit's epoch loop (trainers.trainer) depends on how many processes train: this is
    one process; kilnet.distributed._Rank overrides each method for one rank of an MPI job."""

    params: dict = {}   # extra entries for the callbacks' params

    def __init__(self, n, global_batch):
        self.n, self.global_batch = n, global_batch
        self.steps = -(-n // global_batch)

    def verbosity(self, verbose):
        return verbosity(verbose)

    def callbacks(self, cbs):
        return cbs

    def any_rank(self, flag) -> bool:
        return bool(flag)

    def start(self, model, batch_logs_wanted, verbose):
        self.on_gpu = model.device != "cpu"
        self.batch_logs_wanted = batch_logs_wanted

    def order(self, rng, shuffle):
        return rng.permutation(self.n) if shuffle else np.arange(self.n)

    def begin_step(self, step):
        """[a, b): the positions in the epoch order this process trains on at this step."""
        return step * self.global_batch, min((step + 1) * self.global_batch, self.n)

    def empty_step(self, model):
        raise AssertionError("one process never has an empty step")

    def logs_due(self, step, bar) -> bool:
        # on the CPU the figures are at hand; on the GPU only build them when looked at
        return not self.on_gpu or self.batch_logs_wanted or bar.due(step + 1)

    def logs(self, loss_sum, seen, metrics):
        return {"loss": loss_sum / max(seen, 1), **{m.name: m.result() for m in metrics}}

    def stop_after_step(self, model) -> bool:
        return model.stop_training

    def fetch(self, dev_losses):
        return dev_losses.get()

    def epoch_end(self, model):
        pass

    def evaluate(self, model, prepared, batch_size, evaluate_fn):
        """prepared: (inputs, targets per output, sample weights per output or None)."""
        return evaluate_fn(model, prepared, batch_size)

    def finish(self, model):
        pass


def verbosity(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
    return verbose


