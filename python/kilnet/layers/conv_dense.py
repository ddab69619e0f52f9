"""Conv2D -> Flatten -> Dense as one tape op on the fused kernel (kilnet/conv_dense.h).

In the trainer's step (engine/fusion.py) a model runs these three layers, when nothing else reads
the tensors between them and the convolution's input needs no gradient, as one kernel that keeps
the convolution's output in cache block by block instead of sending it through memory five times
(write, Dense forward, dW, dh, the conv backward). The same weights, the same gradients (to float
rounding), fewer bytes: the canonical CNN's step is bound by those bytes, not by its FLOPs.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet.engine.fusion import allowed, per_example
from kilnet.engine.state import call_state, state_buffer
from kilnet.engine.tape import current_walk, record
from kilnet.engine.tensor import Tensor
from kilnet.layers.activation import activated_output
from kilnet.layers.base import policy_output
from kilnet.layers.conv import Conv2D
from kilnet.layers.core import Dense, Flatten

__all__ = ["types_fit", "group_fits", "input_fits", "call_group", "group_of"]

_F32 = np.dtype(np.float32)
_DENSE_ACTIVATIONS = ("linear", "softmax", "sigmoid")   # softmax/sigmoid: kept apart for the loss


def types_fit(conv, flatten, dense) -> bool:
    """Exactly these classes (a subclass may change what call() does)."""
    return type(conv) is Conv2D and type(flatten) is Flatten and type(dense) is Dense


def group_fits(conv, flatten, dense) -> bool:
    """Whether three built layers, in this order, can run on the fused kernel (their types and
    settings; the input is checked per call by input_fits)."""
    if not types_fit(conv, flatten, dense):
        return False
    if not (conv.built and dense.built) or conv.device != "cpu" or dense.device != "cpu":
        return False
    if dense._low is not None and dense._computes_low_natively():
        return False   # a bfloat16 Dense (>= 32 units) runs its own bfloat16 GEMMs
    # (Under a bfloat16 policy otherwise: neither layer has a bfloat16 kernel, and the group runs
    # the float32 kernel on the float32 input, without rounding the conv's activations between
    # them — rounding would cost two passes over them and speed nothing up; the output is cast
    # to the compute dtype as Dense's own call would.)
    if not (conv._has_trainable_weights() and dense._has_trainable_weights()):
        return False   # frozen weights: the unfused kernels skip their gradients
    if conv.activation not in Conv2D._FUSED or dense.activation not in _DENSE_ACTIVATIONS:
        return False
    if dense.kernel.shape[0] != math.prod(conv._pq) * conv.filters:
        return False
    # DP-SGD's step (fusion.allowing(..., per_example=True)) fuses only where the per-example
    # pass is one kernel (conv_dense_per_example_direct)
    return not per_example() or _per_example_direct(conv, dense)


def _per_example_direct(conv, dense) -> bool:
    taps = conv.kernel.shape[0] * conv.kernel.shape[1] * conv.kernel.shape[2]
    return bool(conv._k.conv_dense_per_example_direct(taps, dense.units, conv.activation))


def input_fits(x) -> bool:
    """Whether this call's input allows it: fusion on (the trainer's step), one float32 NHWC
    tensor with no mask, which needs no gradient (the kernel computes none for it)."""
    if not allowed() or type(x) is not Tensor or x._rg or x._keras_mask is not None:
        return False
    v = x.value
    return v.dtype is _F32 and v.ndim == 4 and isinstance(v, np.ndarray) and v.flags.c_contiguous


def call_group(conv, dense, x):
    """dense(flatten(conv(x))) on the fused kernel; one tape entry whose backward writes both
    layers' weight gradients. Returns what dense would (its softmax/sigmoid apart from the
    logits, for the loss)."""
    xv = x.value
    n = xv.shape[0]
    st = call_state(dense)
    z = state_buffer(st, "conv_dense_z", (n, dense.units), np.float32, np)
    geometry = (conv.strides, conv._pad, conv.dilation_rate, conv._pq, conv.activation)
    conv._k.conv_dense_forward(xv, conv.kernel, _bias(conv), dense.kernel, _bias(dense), z, *geometry)
    zt = Tensor(z)
    record((x,), (zt,), _Backward(conv, dense, xv, geometry, st), dense)
    out = zt if dense.activation == "linear" else activated_output(dense, zt, st)
    return policy_output(dense, out)


def group_of(backward):
    """The fused group behind a tape entry's backward (its conv and dense layers, its input and
    the per-example kernels DP-SGD uses), or None for any other entry."""
    return backward if type(backward) is _Backward else None


class _Backward:
    """The fused group's tape entry: its backward writes both layers' weight gradients. DP-SGD
    (privacy/dpsgd.py) calls per_example and dense_grads instead."""
    __slots__ = ("conv", "dense", "x", "geometry", "st")

    def __init__(self, conv, dense, x, geometry, st):
        self.conv, self.dense, self.x, self.geometry, self.st = conv, dense, x, geometry, st

    def __call__(self, g, needs):
        conv, dense, xv, geometry = self.conv, self.dense, self.x, self.geometry
        k = conv._k
        walk = current_walk()
        if g.dtype is not _F32 or not g.flags.c_contiguous:
            g = np.ascontiguousarray(g, dtype=np.float32)
        # Dense overwrites its views on the walk's first write; the conv adds into zeroed ones
        # (or zeroes them here if it is a layer that overwrites too).
        fresh = walk is not None and walk.first_write(dense) and dense._overwrites_grads
        if walk is not None and walk.first_write(conv) and conv._overwrites_grads:
            conv.dkernel.fill(0.0)
            if conv.use_bias:
                conv.dbias.fill(0.0)
        if fresh and dense.use_bias:
            dense.dbias.fill(0.0)
        k.conv_dense_backward(xv, conv.kernel, _bias(conv), dense.kernel, g, conv.dkernel, _dbias(conv),
                              dense.dkernel, _dbias(dense), *geometry, fresh)
        if walk is not None and walk.on_layer_done is not None:
            walk.on_layer_done(conv)   # distributed: the conv's gradients are final too (the walk
        return (None,)                 # reports the dense layer, this entry's, itself)

    def per_example(self, dz):
        """(per, hsq) for the logits' gradient dz (N, U): per (N, conv weights [+ bias]) each
        example's own convolution gradient, hsq (N,) the squared norm of its flattened conv
        output (its Dense kernel gradient's squared norm is hsq * |dz_n|^2). Both are the call's
        buffers, reused by the next step's call."""
        conv, dense = self.conv, self.dense
        n = self.x.shape[0]
        per = state_buffer(self.st, "conv_dense_per", (n, conv.kernel.size + (conv.filters if conv.use_bias else 0)),
                           np.float32, np)
        hsq = state_buffer(self.st, "conv_dense_hsq", (n,), np.float32, np)
        conv._k.conv_dense_per_example(self.x, conv.kernel, _bias(conv), dense.kernel, dz, per, hsq,
                                       *self.geometry)
        return per, hsq

    def dense_grads(self, dz, overwrite=False):
        """The Dense layer's kernel and bias gradients for dz (N, U): the kernel's written over its
        view (overwrite) or added to it, the bias's added. (Overwriting skips reading 4*P*Q*K*U
        bytes of zeros: 0.49 -> 0.34 ms on the canonical CNN at batch 32, Zen 4.)"""
        conv, dense = self.conv, self.dense
        conv._k.conv_dense_backward(self.x, conv.kernel, _bias(conv), dense.kernel, dz, None, None,
                                    dense.dkernel, _dbias(dense), *self.geometry, overwrite)


def _bias(layer):
    return layer.bias if layer.use_bias else None


def _dbias(layer):
    return layer.dbias if layer.use_bias else None
