"""Dense, Flatten and InputLayer."""
from __future__ import annotations

import math

import numpy as np

from kilnet import activations as _activations
from kilnet import initializers
from kilnet.engine import precision
from kilnet import regularizers as regularizers_mod
from kilnet.layers.activation import ActivatedLayer
from kilnet.layers.base import Layer

__all__ = ["Dense", "Flatten", "InputLayer"]


class Dense(ActivatedLayer):
    """y = activation(x · kernel + bias) over the last axis of x.

    Args (Keras's): units, activation=None, use_bias=True, kernel_initializer='glorot_uniform',
    bias_initializer='zeros'. kernel has shape (in, units), bias (units,).
    """
    supports_masking = True   # a mask on the input passes to the output (Keras)
    _overwrites_grads = True  # dW = x^T dz with beta 0 on the step's first write

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 input_dim=None, lora_rank=None, **kwargs):
        if input_dim is not None and "input_shape" not in kwargs:
            kwargs["input_shape"] = (input_dim,)
        super().__init__(activation=activation, **kwargs)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units < 1:
            raise ValueError(f"Dense: units must be a positive int, got {units!r}")
        _refuse_unsupported(self, activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
                            bias_constraint=bias_constraint, lora_rank=lora_rank)
        self.units = int(units)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        # Penalties on the weights: the model adds them to the loss (kilnet.regularizers.penalties).
        self.kernel_regularizer = regularizers_mod.get(kernel_regularizer)
        self.bias_regularizer = regularizers_mod.get(bias_regularizer)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f"Dense {self.name!r}: needs inputs with a known last axis, got shape {input_shape}")
        init = self._initialize
        self._add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer, initialize=init)
        if self.use_bias:
            self._add_weight("bias", (self.units,), self.bias_initializer, initialize=init)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def _computes_low_natively(self) -> bool:
        # bfloat16 policies on the CPU: the three GEMMs run on gemm_bf16 (bfloat16 products,
        # float32 sums; AMX tiles where the CPU has them), the bias and activation in float32.
        # Below 32 units (the AMX tile width: a 10-class output fills a third of each tile) the
        # float32 GEMM on the rounded inputs is faster, and more precise.
        return self.compute_dtype == "bfloat16" and self.device == "cpu" and self.units >= 32

    def _gemm(self, a, b, c, trans_a=False, trans_b=False, beta=0.0, bias=None, colsum=None):
        """colsum (the bias gradient of dW = xᵀ dz): += the column sums of b, which both GEMMs
        take from their packing of dz (no second pass over it)."""
        if self._computes_low_natively():
            self._k.gemm_bf16(a, b, c, trans_a, trans_b, 1.0, beta, bias, colsum)
            return
        self._k.gemm(a, b, c, trans_a=trans_a, trans_b=trans_b, beta=beta, bias=bias, colsum=colsum)

    def _activation_takes_bf16(self) -> bool:
        if self.activation in _activations.KERNEL_ACTIVATIONS or self.activation in ("softmax", "sigmoid"):
            return False
        return getattr(_activations.array_rule(self.activation)[0], "takes_bf16", False)

    def forward_linear(self, x, training=False):
        n_in = self.kernel.shape[0]
        x2 = x.reshape(-1, n_in)
        if self._computes_low_natively() and (self.activation == "linear" or self._activation_takes_bf16()):
            # the bfloat16 output (or pre-activation, for an activation kernel that reads one:
            # GELU) straight from the GEMM (x W + b rounded once, as Keras's bfloat16 z): no
            # float32 z written and read after it, half the bytes kept for the backward
            z = self._buffer("z16", (x2.shape[0], self.units), precision.np_dtype("bfloat16"))
        else:
            z = self._buffer("z", (x2.shape[0], self.units))
        self._gemm(x2, self.kernel, z, bias=self.bias if self.use_bias else None)
        self._state()["x"] = x2
        return z.reshape(x.shape[:-1] + (self.units,))

    def backward_linear(self, dz, need_dx=True, need_dw=True):
        x2 = self._state()["x"]
        dz2 = dz.reshape(-1, self.units)
        if need_dw and self.trainable:
            fresh, self._fresh_grads = self._fresh_grads, False
            if self.use_bias and fresh:
                self.dbias.fill(0.0)
            # dW (+)= x^T dz;  db += colsum(dz)
            self._gemm(x2, dz2, self.dkernel, trans_a=True, beta=0.0 if fresh else 1.0,
                       colsum=self.dbias if self.use_bias else None)
        if not need_dx:
            return None
        dx = self._buffer("dx", x2.shape)
        self._gemm(dz2, self.kernel, dx, trans_b=True)                      # dx = dz W^T
        return dx.reshape(dz.shape[:-1] + (x2.shape[1],))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers_mod.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers_mod.serialize(self.bias_regularizer), "kernel_constraint": None,
                "bias_constraint": None}


class Flatten(Layer):
    """Flattens each sample to one axis (a view: no copy)."""
    _moves_values = True   # any float dtype as it is (a bfloat16 policy converts nothing)

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"Flatten: only data_format='channels_last' is supported, got {data_format!r}")

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        return (input_shape[0], None if None in rest else math.prod(rest))

    def forward(self, x, training=False):
        self._state()["shape"] = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True, need_dw=True):
        return dy.reshape(self._state()["shape"]) if need_dx else None

    def get_config(self):
        return {**super().get_config(), "data_format": "channels_last"}


class InputLayer(Layer):
    """Declares the model's input shape (Keras's InputLayer / keras.Input)."""

    def __init__(self, shape=None, batch_size=None, batch_shape=None, input_shape=None,
                 batch_input_shape=None, sparse=None, ragged=None, optional=None, **kwargs):
        if batch_shape is None and batch_input_shape is not None:
            batch_shape = batch_input_shape
        if shape is None and input_shape is not None:
            shape = input_shape
        if shape is None and batch_shape is not None:
            shape = tuple(batch_shape)[1:]
        if shape is None:
            raise ValueError("InputLayer needs shape= (or batch_shape=)")
        if sparse or ragged:
            raise ValueError("InputLayer: sparse and ragged inputs are not supported")
        # integer inputs (ids for an Embedding) are fine: the layers below decide what they take
        if isinstance(kwargs.get("dtype"), str) and kwargs["dtype"] in ("int32", "int64"):
            kwargs.pop("dtype")
        kwargs["dtype"] = kwargs.get("dtype") or "float32"   # the input's dtype, not the global policy
        super().__init__(input_shape=shape, **kwargs)

    def forward(self, x, training=False):
        return x

    def backward(self, dy, need_dx=True, need_dw=True):
        return dy if need_dx else None

    def get_config(self):
        cfg = super().get_config()
        return {"batch_shape": [None, *self._input_shape], "dtype": "float32", "sparse": False,
                "name": cfg["name"]}


def _refuse_unsupported(layer, **kwargs):
    for k, v in kwargs.items():
        if v is not None:
            raise ValueError(f"{type(layer).__name__} {layer.name!r}: {k}={v!r} is not supported yet")
