"""The weight budget of a load: a model file may not make kilnet allocate more weights than
the file holds data for.

Before a loader builds the architecture it sums the elements of the weight datasets the file
really stores (h5_checks.stored_elements: a dataset's declared size must agree with its storage,
so a tiny file cannot declare a huge dataset). While the model is built inside
`weight_budget(n, where)`, every weight a layer creates is charged BEFORE it is allocated
(Layer._add_weight calls `charge`); one that would take the total past n raises
ModelFileError. So a 28 KB file that declares Dense(units=3*10**7) is refused after allocating
at most what the file holds, not 3.8 GB, and units=10**12 is a ModelFileError, never a
MemoryError. Budgets are per thread (a load on one thread does not limit another's)."""
from __future__ import annotations

import contextlib
import math
import threading

from kilnet.errors import ModelFileError

__all__ = ["weight_budget", "charge", "SLACK_ELEMENTS"]

# Weights a layer may create beyond what the file stores (a seed, a counter the file omits).
SLACK_ELEMENTS = 1 << 16

_state = threading.local()


@contextlib.contextmanager
def weight_budget(elements, where):
    """Within: the weights created on this thread may total at most elements + SLACK_ELEMENTS."""
    prev = getattr(_state, "budget", None)
    _state.budget = [int(elements) + SLACK_ELEMENTS, 0, where]
    try:
        yield
    finally:
        _state.budget = prev


def charge(shape, who):
    """Called by a layer before it allocates a weight of `shape`; no-op outside a load."""
    b = getattr(_state, "budget", None)
    if b is None:
        return
    n = math.prod(int(s) for s in shape)   # Python ints: no overflow
    b[1] += n
    if b[1] > b[0]:
        raise ModelFileError(f"{b[2]}: the architecture declares more weights than the file holds: {who} asks "
                             f"for {n} values of shape {tuple(shape)}, {b[1]} in all so far, but the file stores "
                             f"{b[0] - SLACK_ELEMENTS} weight values; refused before allocating")
