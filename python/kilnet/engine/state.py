"""Where a fused layer call keeps what its backward needs, and its reusable buffers.

Each call of a layer gets its own state dict (one layer called twice in a step keeps two), so
what backward needs belongs to the call, never to the layer. Inside a trainer step a pool hands
out the same dict to the same call position every step (the k-th call of layer L), so buffers
are reused and the steady-state step allocates no array memory. Outside a pool (eager user code,
custom training loops) each call gets a fresh dict.
"""
from __future__ import annotations

import threading

__all__ = ["StatePool", "call_state", "state_buffer", "using_pool"]

_local = threading.local()


class StatePool:
    """Per-thread state dicts keyed by (layer, k-th call since the last `reset()`)."""

    def __init__(self):
        self.states: dict = {}
        self.counts: dict = {}

    def reset(self):
        self.counts.clear()

    def get(self, layer) -> dict:
        k = id(layer)
        n = self.counts.get(k, 0)
        self.counts[k] = n + 1
        key = (k, n)
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = {}
        return st

    def buffers(self):
        """Every reused buffer: {(layer id, call index, key): array} (the allocation tests)."""
        return {(lk, n, k[1]): v for (lk, n), st in self.states.items() for k, v in st.items()
                if isinstance(k, tuple) and k[0] == "buf"}


def call_state(layer) -> dict:
    pool = getattr(_local, "pool", None)
    return {} if pool is None else pool.get(layer)


def state_buffer(st, key, shape, dtype, xp):
    """An array of `shape` kept in the call state `st` across steps (a view of it for a smaller
    leading dimension: the last partial batch); a new one when the trailing shape changes."""
    buf = st.get(("buf", key))
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
        buf = st[("buf", key)] = xp.empty(shape, dtype)
    return buf if buf.shape[0] == shape[0] else buf[: shape[0]]


class using_pool:
    """`with using_pool(pool):` layer calls on this thread take their state from `pool`,
    which restarts its call counts on entry."""

    def __init__(self, pool):
        self.pool = pool

    def __enter__(self):
        self.prev = getattr(_local, "pool", None)
        self.pool.reset()
        _local.pool = self.pool
        return self.pool

    def __exit__(self, *exc):
        _local.pool = self.prev
        return False
