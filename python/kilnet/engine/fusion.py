"""Whether model calls on this thread may run a group of layers as one fused kernel.

A fused group (layers/conv_dense.py) leaves out the tensors between its layers and writes its
weight gradients for all of them from one tape entry. That is right for the trainer's own step
(gradients of every trainable weight, one walk; the group reports each of its layers done, for
distributed training's buckets), and not for what else records a tape: a user's GradientTape
may ask for the tensors in between. So the trainer
turns fusion on around its forward pass (`with allowing(True):`), and so does DP-SGD's step,
which asks a group for its per-example pass instead of its backward (conv_dense.group_of):
`allowing(True, per_example=True)` forms only the groups whose per-example pass is one kernel on
this machine (elsewhere the layers run unfused, which was faster than the general per-example
kernels). Nothing else turns fusion on.
KILNET_FUSION=0 in the environment turns it off everywhere (to compare, or to rule it out).
"""
from __future__ import annotations

import os
import threading

__all__ = ["allowed", "allowing", "per_example"]

_local = threading.local()
_ENABLED = os.environ.get("KILNET_FUSION", "1").strip() != "0"


def allowed() -> bool:
    return getattr(_local, "on", False)


def per_example() -> bool:
    """Whether the fused groups formed now must also have a one-pass per-example kernel."""
    return getattr(_local, "per_example", False)


class allowing:
    def __init__(self, on: bool, per_example: bool = False):
        self.on = bool(on) and _ENABLED
        self.per_example = bool(per_example)

    def __enter__(self):
        self.prev = (getattr(_local, "on", False), getattr(_local, "per_example", False))
        _local.on, _local.per_example = self.on, self.per_example

    def __exit__(self, *exc):
        _local.on, _local.per_example = self.prev
        return False
