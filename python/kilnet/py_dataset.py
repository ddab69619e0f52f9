"""kilnet.utils.PyDataset: Keras 3's base class for a dataset written in Python.

A subclass returns whole batches from `__getitem__(index)` ((x,), (x, y) or (x, y,
sample_weight)) and their count from `__len__` (or a `num_batches` property; None means
endless). fit/evaluate/predict read it through kilnet.trainers.data_adapters: in a background
thread, with `workers` > 1 in a pool of threads, or of processes with use_multiprocessing=True.
"""
from __future__ import annotations

import itertools
import warnings

__all__ = ["PyDataset"]


class PyDataset:
    """Base class for a dataset of batches made by Python code (as keras.utils.PyDataset).

    Args:
        workers: how many threads (or processes) call __getitem__ at once while fit reads.
        use_multiprocessing: read in worker processes (the dataset must survive a fork; with
            the 'spawn' start method it must pickle) instead of threads.
        max_queue_size: batches read ahead of the training step.
    """

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self._workers = workers
        self._use_multiprocessing = use_multiprocessing
        self._max_queue_size = max_queue_size

    def _warn_if_super_not_called(self):
        missing = False
        for attr, default in (("_workers", 1), ("_use_multiprocessing", False), ("_max_queue_size", 10)):
            if not hasattr(self, attr):
                setattr(self, attr, default)
                missing = True
        if missing:
            warnings.warn("Your `PyDataset` class should call `super().__init__(**kwargs)` in its constructor. "
                          "`**kwargs` can include `workers`, `use_multiprocessing`, `max_queue_size`. Do not "
                          "pass these arguments to `fit()`, as they will be ignored.", stacklevel=3)

    @property
    def workers(self):
        self._warn_if_super_not_called()
        return self._workers

    @workers.setter
    def workers(self, value):
        self._workers = value

    @property
    def use_multiprocessing(self):
        self._warn_if_super_not_called()
        return self._use_multiprocessing

    @use_multiprocessing.setter
    def use_multiprocessing(self, value):
        self._use_multiprocessing = value

    @property
    def max_queue_size(self):
        self._warn_if_super_not_called()
        return self._max_queue_size

    @max_queue_size.setter
    def max_queue_size(self, value):
        self._max_queue_size = value

    def __getitem__(self, index):
        """The batch at position `index`."""
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__(index) returning a batch")

    @property
    def num_batches(self):
        """How many batches there are (None: endless). Defaults to len(self)."""
        if hasattr(self, "__len__"):
            return len(self)
        raise NotImplementedError(f"{type(self).__name__} must implement __len__ or the num_batches property")

    def __iter__(self):
        try:
            n = self.num_batches
        except NotImplementedError:
            n = None
        for index in (itertools.count() if n is None else range(n)):
            yield self[index]

    def on_epoch_begin(self):
        """Called at the start of every epoch."""

    def on_epoch_end(self):
        """Called at the end of every epoch (reshuffle here, say)."""
