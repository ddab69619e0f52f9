"""Keras 3's keras.mixed_precision: the global dtype policy and dynamic loss scaling.

    kilnet.mixed_precision.set_global_policy("mixed_bfloat16")
    model = kilnet.Sequential([..., kilnet.layers.Dense(10, activation="softmax", dtype="float32")])

Layers made after set_global_policy take the policy (a layer's `dtype=` overrides it); variables
stay float32, layers compute in the compute dtype, outputs are bfloat16 (ml_dtypes.bfloat16) or
float16 arrays, losses are computed in float32. See docs/mixed_precision.md for what runs on a
bfloat16 kernel and what computes in float32 on rounded values.
"""
from __future__ import annotations

from kilnet.dtype_policies import DTypePolicy, dtype_policy, set_dtype_policy

__all__ = ["DTypePolicy", "Policy", "set_global_policy", "global_policy", "set_dtype_policy", "dtype_policy",
           "LossScaleOptimizer"]

Policy = DTypePolicy   # Keras's legacy name
set_global_policy = set_dtype_policy
global_policy = dtype_policy


def __getattr__(name):
    if name == "LossScaleOptimizer":   # imports the optimizers only when asked for
        from kilnet.optimizers import LossScaleOptimizer
        return LossScaleOptimizer
    raise AttributeError(f"module 'kilnet.mixed_precision' has no attribute {name!r}")
