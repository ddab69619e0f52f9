"""Timing that other thread pools cannot fool (issue 23): used by `kilnet bench` and the scripts
in benchmarks/ that compare libraries.

Why: numpy's OpenBLAS, PyTorch's and kilnet's OpenMP teams keep idle workers spinning for a while
after a call; a library timed right after another one then waits for a core, and on a 2-core
machine one call measured 50x its real time. Three defences:
  * wait_idle(): before a library's turn, wait until no other thread of this process is running
    (their states in /proc/self/task), so that it starts with the neighbours' pools idle;
  * rotate(): the order of the libraries changes from round to round, so that a slow moment of
    the machine does not always hit the same one;
  * stalled(): a row whose per-round medians spread by more than STALL_SPREAD (max/min) is
    flagged: a stall or a busy machine, not a property of the kernel.
And worker_env(): the environment of a library's worker process. Importing kilnet tunes the
process's allocator (backend.malloc_policy()); a worker of another library that imports kilnet
for these helpers gets KILNET_MALLOC=system, so the yardstick runs as its own users run it."""
from __future__ import annotations

import os
import statistics
import time

__all__ = ["STALL_SPREAD", "spread", "stalled", "rotate", "busy_threads", "wait_idle", "median_seconds",
           "worker_env"]

# Round medians of one row farther apart than this (max/min) are not plausible for a fixed
# computation on fixed data that has its cores: something else ran (a stalled thread pool, or
# another process; benchmarks/RESULTS.md, "Sharing the cores").
STALL_SPREAD = 1.5


def spread(samples):
    """max/min of positive samples (1.0 for fewer than two)."""
    s = [float(x) for x in samples]
    if any(not x > 0 for x in s):
        raise ValueError(f"spread: samples must be positive, got {samples!r}")
    return max(s) / min(s) if len(s) > 1 else 1.0


def stalled(samples, limit=STALL_SPREAD):
    """True when the samples (the per-round medians of one row) spread by more than `limit`."""
    if not limit > 1:
        raise ValueError(f"stalled: limit must be > 1, got {limit!r}")
    return spread(samples) > limit


def rotate(items, round_index):
    """items in the order of round `round_index`: rotated by one place per round."""
    items = list(items)
    if not items:
        return items
    k = round_index % len(items)
    return items[k:] + items[:k]


def busy_threads():
    """Thread ids of this process, other than the calling thread, that the kernel reports as
    running (state R), or None where /proc/self/task cannot be read (not Linux)."""
    me = str(_gettid())
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    busy = []
    for tid in tids:
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:   # the thread ended meanwhile
            continue
        if stat[stat.rindex(")") + 2:].split(" ", 1)[0] == "R":   # the name may hold spaces
            busy.append(int(tid))
    return busy


def _gettid():
    try:
        return os.gettid()   # Python >= 3.8 on Linux
    except AttributeError:
        import threading
        return threading.get_native_id()


def wait_idle(timeout=1.0, settle=0.005, fallback=0.25):
    """Wait until no other thread of this process is running (checked twice, `settle` s apart)
    or `timeout` s passed. Returns True when idleness was seen, False on timeout; where thread
    states cannot be read it sleeps `fallback` s (longer than OpenBLAS's default spin) and
    returns None."""
    if busy_threads() is None:
        time.sleep(fallback)
        return None
    end = time.perf_counter() + timeout
    while True:
        if not busy_threads():
            time.sleep(settle)
            if not busy_threads():
                return True
        if time.perf_counter() > end:
            return False
        time.sleep(0.01)


def median_seconds(fn, warm=1, min_reps=3, budget=0.03, max_reps=20):
    """Median seconds per call of fn after `warm` calls: at least min_reps calls, and more while
    within `budget` seconds and under max_reps."""
    for _ in range(warm):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker_env(lib, threads=None, base=None):
    """The environment for `lib`'s worker process: `base` (default os.environ) with
    OMP_NUM_THREADS=threads when given, and KILNET_MALLOC=system unless lib is kilnet's own
    ("kilnet", "kilnet-bf16", ...)."""
    env = dict(os.environ if base is None else base)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if not str(lib).startswith("kilnet"):
        env["KILNET_MALLOC"] = "system"
    return env
