"""Batches from Python data code for fit/evaluate/predict: generators and iterators, a
kilnet.utils.PyDataset, a torch DataLoader, any other iterable of batches.

A batch is (x,), (x, y) or (x, y, sample_weight) (a list counts as a tuple; a lone array or dict
is x), x/y in any form fit takes arrays in; torch tensors become numpy arrays. A background
thread reads the batches into a bounded queue (max_queue_size) and converts them, so the
training step does not wait for Python data code; a PyDataset with workers > 1 is read by a
pool of threads, or of processes with use_multiprocessing=True.

Epochs follow keras/src/trainers/epoch_iterator.py:
- steps=None and a known number of batches (len(), PyDataset.num_batches): every epoch is a
  new pass over the data;
- steps=None and an unknown number (a generator): every epoch reads until the data ends
  (iter() is called again each epoch, so a one-shot generator has nothing left for a second
  epoch: fit warns "Your input ran out of data" and stops; Keras 3 replays the two batches it
  peeked at, an artefact we do not copy);
- steps=k: each epoch takes the next k batches of one continuing pass; a pass that ends early
  ends the epoch with the same warning, a new pass starts after it (or after num_batches).
Up to max_queue_size batches past the last step are read ahead and dropped when the call ends.
"""
from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import threading
import time
import warnings

import numpy as np

from kilnet import backend
from kilnet.py_dataset import PyDataset
from kilnet.utils import as_numpy, get_rng

__all__ = ["is_stream", "DataStream", "unpack_batch", "INTERRUPTED"]

_DEFAULT_QUEUE = 10
INTERRUPTED = ("Your input ran out of data; interrupting training. Make sure that your dataset or generator "
                "can generate at least `steps_per_epoch * epochs` batches.")


def is_stream(x) -> bool:
    """Whether x is read as a stream of batches (generator, iterator, PyDataset, DataLoader, any
    other iterable that is not array-like) rather than as arrays."""
    if x is None or isinstance(x, (np.ndarray, list, tuple, dict, str, bytes)):
        return False
    if isinstance(x, PyDataset):
        return True
    if hasattr(x, "__array__") or hasattr(x, "__dlpack__") or hasattr(x, "__cuda_array_interface__"):
        return False     # torch tensors, pandas frames, CuPy arrays: arrays
    return hasattr(x, "__iter__") or hasattr(x, "__next__")


def kind_of(x) -> str:
    """How error messages name the data."""
    if isinstance(x, PyDataset):
        return "PyDataset"
    if _is_torch_dataloader(x):
        return "DataLoader"
    return "generator" if hasattr(x, "__next__") else f"iterable {type(x).__name__}"


def _is_torch_dataloader(x) -> bool:
    return any(c.__name__ == "DataLoader" and c.__module__.startswith("torch.utils.data")
               for c in type(x).__mro__)


# ---------------------------------------------------------------------- one batch
def unpack_batch(batch, index, what):
    """(x, y, sample_weight) of one fed batch (None where absent), tensors as numpy arrays."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if isinstance(batch, tuple):
        if not 1 <= len(batch) <= 3:
            raise ValueError(f"{what}: batch {index} has {len(batch)} elements; a batch must be (x,), (x, y) or "
                             "(x, y, sample_weight)")
        x, y, sw = batch + (None,) * (3 - len(batch))
    elif batch is None:
        raise ValueError(f"{what}: batch {index} is None; a batch must be (x,), (x, y) or (x, y, sample_weight)")
    else:
        x, y, sw = batch, None, None
    return _to_numpy(x), _to_numpy(y), _to_numpy(sw)


def _to_numpy(v):
    """Tensors and arrays in a structure (dict, list, tuple) as numpy arrays of their own: the
    batch waits in a queue, so a generator that refills one buffer must not change it."""
    if v is None or isinstance(v, (int, float, np.generic)):
        return v
    if isinstance(v, np.ndarray):
        return np.array(v)
    if isinstance(v, dict):
        return {k: _to_numpy(a) for k, a in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_numpy(a) for a in v)
    if hasattr(v, "detach") and hasattr(v, "cpu"):        # a torch tensor, maybe on a GPU
        return np.array(v.detach().cpu().numpy())
    return as_numpy(v, "batch")


# ---------------------------------------------------------------------- where batches come from
class _IterableSource:
    """A generator, iterator or iterable (a DataLoader, say): a pass is iter(x)."""

    def __init__(self, x):
        self.x = x
        self.num_batches = None
        if hasattr(x, "__len__") and not hasattr(x, "__next__"):
            try:
                self.num_batches = len(x)
            except TypeError:     # a DataLoader over an IterableDataset has no length
                pass
        self.depth = _DEFAULT_QUEUE

    def new_pass(self, shuffle):
        return iter(self.x), False     # not ours to close: the caller may keep reading it


class _PyDatasetSource:
    """A PyDataset: a pass reads ds[i] in order (shuffled per pass when asked), by `workers`
    threads or processes when there are several."""

    def __init__(self, ds):
        self.ds = ds
        self.num_batches = ds.num_batches
        self.depth = max(1, int(ds.max_queue_size))
        workers, mp = int(ds.workers), bool(ds.use_multiprocessing)
        self.pool = "processes" if mp and workers > 0 else "threads" if workers > 1 else None
        self.workers = max(workers, 1)

    def new_pass(self, shuffle):
        # The order is drawn here, on the caller's thread, so a seeded run repeats exactly.
        n = self.num_batches
        order = itertools.count() if n is None else (get_rng().permutation(n).tolist() if shuffle else range(n))
        if self.pool is None:
            return (self.ds[i] for i in order), True
        reader = _process_reader if self.pool == "processes" else _thread_reader
        return reader(self.ds, order, self.workers, self.depth), True


def _thread_reader(ds, order, workers, depth):
    """ds[i] for i in order, `depth` requests in flight on `workers` threads, in order."""
    from concurrent.futures import ThreadPoolExecutor
    ex = ThreadPoolExecutor(workers, thread_name_prefix="kilnet-pydataset")
    try:
        pending = collections.deque()
        it = iter(order)
        for i in itertools.islice(it, depth):
            pending.append(ex.submit(ds.__getitem__, i))
        while pending:
            batch = pending.popleft().result()
            for i in itertools.islice(it, 1):
                pending.append(ex.submit(ds.__getitem__, i))
            yield batch
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


_WORKER_DATASET = None


def _init_worker(ds):
    global _WORKER_DATASET
    _WORKER_DATASET = ds


def _worker_item(i):
    return _WORKER_DATASET[i]


def _process_reader(ds, order, workers, depth):
    """ds[i] for i in order from `workers` processes (forked where the platform can: the
    dataset is inherited, not pickled, as in Keras). A new pool per pass, so what
    on_epoch_end changed reaches the workers."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(ds,))
    try:
        pending = collections.deque()
        it = iter(order)
        for i in itertools.islice(it, depth):
            pending.append(pool.apply_async(_worker_item, (i,)))
        while pending:
            batch = pending.popleft().get()
            for i in itertools.islice(it, 1):
                pending.append(pool.apply_async(_worker_item, (i,)))
            yield batch
    finally:
        pool.terminate()
        pool.join()


# ---------------------------------------------------------------------- reading ahead
_END = "end"


def _spare_core() -> bool:
    """Whether kilnet's kernels use fewer threads than this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return backend.get_num_threads() < cores


class _Prefetcher:
    """Reads one pass: raw batch -> (x, y, sw) numpy -> prepare(...) once `prepare` is set.

    It starts inline, on the caller's thread, timing the data code: the first PROBE batches
    decide. Where the data code takes more than THREAD_SHARE of the time between batches and
    more than THREAD_MIN_S per batch, a background thread takes over and reads ahead into a
    bounded queue; otherwise the pass stays inline. A thread is not free: each hand-over of the
    GIL between it and the training step costs more than a cheap batch's own work (x[idx] and a
    check, ~30 us), worst when the kernels' threads occupy every core
    (benchmarks/bench_data_pipelines.py measures both).
    An exception (the user's data code, a bad batch) is raised by get() on the caller's thread.

    The thread sleeps when the queue is full and is woken only once it is down to half.

    Where kilnet's kernels leave a core of this process free (kilnet.set_num_threads(n) with
    fewer threads than usable cores), the thread runs there while the kernels hold no GIL, and
    takes over from SPARE_SHARE of the time on: measured on the canonical CNN at 1 thread on 2
    cores, a generator's epoch went from x1.03-1.04 of the array epoch inline to x0.99 (paired
    medians of 9 rounds, two runs each; benchmarks/RESULTS.md)."""

    PROBE = 8
    THREAD_SHARE = 0.03
    THREAD_MIN_S = 200e-6
    SPARE_SHARE = 0.01

    def __init__(self, it, owned, depth, what, prepare, mode="auto"):
        self.it, self.owned = it, owned
        self.items = collections.deque()
        self.cond = threading.Condition(threading.Lock())
        self.depth, self.low = depth, depth // 2
        self.stopping = False
        self.what, self.prepare = what, prepare
        self.index = 0            # the next batch's index in the pass
        self.thread = None
        self.mode = mode          # "auto" (probe, then decide), "inline" or "thread"
        self.probe_data_s = 0.0
        self.probe_t0 = None
        if mode == "thread":
            self._start_thread()

    # -- inline
    def _read(self):
        """The next item, read on this thread: ("ok", index, value) or (_END, None, None)."""
        try:
            raw = next(self.it)
        except StopIteration:
            return _END, None, None
        batch = unpack_batch(raw, self.index, self.what)
        prepare = self.prepare   # set by the caller once the model is built
        item = ("ok", self.index, (batch, None if prepare is None else prepare(batch, self.index)))
        self.index += 1
        return item

    def _inline_get(self):
        t = time.perf_counter()
        if self.probe_t0 is None:
            self.probe_t0 = t
        item = self._read()
        if self.mode == "auto":
            now = time.perf_counter()
            self.probe_data_s += now - t
            if self.index >= self.PROBE or item[0] == _END:
                wall = now - self.probe_t0
                share = self.probe_data_s / wall if wall > 0 else 0.0
                self.mode = "inline"
                per_batch = self.probe_data_s / max(self.index, 1)
                busy = share > self.THREAD_SHARE and per_batch > self.THREAD_MIN_S
                if (busy or (share > self.SPARE_SHARE and _spare_core())) and item[0] != _END:
                    self.items.append(item)
                    self._start_thread()
                    return None
        return item

    # -- background thread
    def _start_thread(self):
        self.mode = "thread"
        self.thread = threading.Thread(target=self._run, name="kilnet-data", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        with self.cond:
            while len(self.items) >= self.depth and not self.stopping:
                self.cond.wait(0.5)
            if self.stopping:
                return False
            self.items.append(item)
            self.cond.notify_all()   # a get() waiting for a batch
            return True

    def _run(self):
        try:
            while not self.stopping:
                time.sleep(0)    # hand the GIL back between stages: the training step waits less for it
                item = self._read()
                if not self._put(item) or item[0] == _END:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._put(("error", self.index, e))

    def _thread_get(self):
        with self.cond:
            while not self.items:
                if not self.thread.is_alive():
                    raise RuntimeError(f"{self.what}: the data thread ended without a result")
                self.cond.wait(1.0)
            item = self.items[0]
            if item[0] != _END:
                self.items.popleft()
                if len(self.items) <= self.low:
                    self.cond.notify_all()   # the thread refills from half empty
        if item[0] == "error":
            self.thread.join()
        return item

    def get(self):
        """(index, (batch, prepared or None)), or None at the end of the pass."""
        item = None
        if self.thread is None:
            item = self._inline_get()
        if item is None:
            item = self._thread_get()
        kind, index, value = item
        if kind == _END:
            return None    # a later get() sees the end again (inline: next() of an ended iterator)
        if kind == "error":
            raise value
        return index, value

    def close(self, timeout=10.0):
        with self.cond:
            self.stopping = True
            self.items.clear()
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                warnings.warn(f"{self.what}: the data thread is still inside your data code after {timeout:.0f}s; "
                              "it will stop when that call returns", RuntimeWarning, stacklevel=3)
                return
        if self.owned:
            self.it.close()   # our own pass generator: stops its thread or process pool


# ---------------------------------------------------------------------- epochs
class DataStream:
    """Batches of one data argument over the epochs of one fit/evaluate/predict call."""

    def __init__(self, x, what, steps=None, shuffle=False):
        if steps is not None and (not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"{what}: steps must be a positive int or None, got {steps!r}")
        self.what, self.kind = what, kind_of(x)
        self.is_pydataset = isinstance(x, PyDataset)
        self.one_shot = hasattr(x, "__next__") and iter(x) is x   # a generator: one pass only
        self.source = _PyDatasetSource(x) if self.is_pydataset else _IterableSource(x)
        self.steps = None if steps is None else int(steps)
        self.num_batches = self.source.num_batches
        if self.num_batches is not None and self.num_batches < 1 and steps is None:
            raise ValueError(f"{what}: the {self.kind} has no batches (its length is {self.num_batches})")
        self.shuffle = shuffle
        self.prepare = None   # (batch, index) -> prepared batch, run on the data thread
        self._pass = None
        self._seen = 0

    @property
    def epoch_steps(self):
        """Steps per epoch when known (the progress bar's total), else None."""
        return self.steps or self.num_batches

    def set_prepare(self, fn):
        self.prepare = fn
        if self._pass is not None:
            self._pass.prepare = fn

    def _new_pass(self):
        self._close_pass()
        it, owned = self.source.new_pass(self.shuffle)
        self._pass = _Prefetcher(it, owned, self.source.depth, self.what, self.prepare)
        self._seen = 0

    def _close_pass(self):
        if self._pass is not None:
            self._pass.close()
            self._pass = None

    def on_epoch_begin(self):
        if self.is_pydataset:
            self.source.ds.on_epoch_begin()

    def on_epoch_end(self):
        if self.is_pydataset:
            self.source.ds.on_epoch_end()

    def epoch(self):
        """The batches of one epoch: (index in its pass, (x, y, sw) numpy, prepared or None)."""
        if self._pass is None or self.steps is None:
            self._new_pass()
        limit = self.steps or self.num_batches
        n = 0
        while limit is None or n < limit:
            if self.num_batches and self._seen >= self.num_batches:
                warnings.warn(INTERRUPTED, UserWarning, stacklevel=4)   # steps > the data's length
                break
            got = self._pass.get()
            if got is None:
                self._close_pass()
                if self.steps is not None and n > 0:
                    warnings.warn(INTERRUPTED, UserWarning, stacklevel=4)
                break
            self._seen += 1
            n += 1
            index, (batch, prepared) = got
            yield index, batch, prepared
        if self.num_batches and self._seen >= self.num_batches:
            self._close_pass()

    def close(self):
        self._close_pass()
