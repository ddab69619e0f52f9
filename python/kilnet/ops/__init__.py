"""kilnet.ops: the keras.ops names for custom layers' call() and user code.

Every op takes Tensors, Variables, numpy or CuPy arrays and Python numbers, runs on the array
module of its operands (numpy on the CPU, CuPy on the GPU; two devices in one op is a
ValueError), returns a kilnet Tensor, and is recorded on a recording GradientTape when an input
needs a gradient. Python numbers stay weak scalars (float32 * 2.0 is float32); dtypes are kept
(float64 stays float64). See docs/ops.md for the table of ops, gradients and kernels.
"""
from kilnet.engine.node import any_symbolic, symbolic_op
from kilnet.engine.tensor import add, cast, divide, matmul, multiply, negative, power, subtract
from kilnet.ops.attention import dot_product_attention
from kilnet.ops.creation import (arange, convert_to_tensor, eye, full, full_like, ones, ones_like, zeros,
                                 zeros_like)
from kilnet.ops.linalg import einsum
from kilnet.ops.math import (abs, absolute, argmax, argmin, ceil, clip, cos, equal, erf, exp, expm1, floor,
                             greater, greater_equal, less, less_equal, log, log1p, logical_and, logical_not,
                             logical_or, logical_xor, logsumexp, max, maximum, mean, min, minimum, not_equal,
                             reciprocal, round, rsqrt, sign, sin, sqrt, square, std, sum, var, where)
from kilnet.ops.nn import (elu, gelu, hard_sigmoid, leaky_relu, log_softmax, relu, relu6, sigmoid, silu,
                           softmax, softplus, softsign, swish, tanh)
from kilnet.ops.shape import (broadcast_to, concatenate, expand_dims, moveaxis, one_hot, reshape, shape, split,
                              squeeze, stack, stop_gradient, swapaxes, take, tile, top_k, transpose)

__all__ = [
    # arithmetic (the engine's operators)
    "add", "subtract", "multiply", "divide", "negative", "power", "matmul", "cast",
    # elementwise
    "square", "sqrt", "rsqrt", "reciprocal", "exp", "log", "log1p", "expm1", "abs", "absolute", "sign",
    "sin", "cos", "erf", "floor", "ceil", "round", "maximum", "minimum", "clip", "where",
    # comparisons and logic (no gradient)
    "equal", "not_equal", "greater", "greater_equal", "less", "less_equal", "logical_and", "logical_or",
    "logical_xor", "logical_not",
    # reductions
    "sum", "mean", "max", "min", "var", "std", "argmax", "argmin", "logsumexp",
    # activations
    "relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "softmax", "log_softmax", "gelu", "silu", "swish",
    "leaky_relu", "elu", "softplus", "softsign",
    # attention (fused kernel)
    "dot_product_attention",
    # shape and array ops
    "reshape", "transpose", "swapaxes", "moveaxis", "tile", "expand_dims", "squeeze", "concatenate", "stack", "split", "take",
    "broadcast_to", "one_hot", "top_k", "shape", "stop_gradient", "einsum",
    # creation
    "convert_to_tensor", "arange", "zeros", "ones", "full", "eye", "zeros_like", "ones_like", "full_like",
]


def _symbolic_aware(name, fn):
    """The op, which on KerasTensors (a functional model being built) records a graph node."""
    def op(*args, **kwargs):
        if any_symbolic(args, kwargs):
            return symbolic_op(fn, name, args, kwargs)
        return fn(*args, **kwargs)
    op.__name__, op.__qualname__, op.__doc__, op.__wrapped__ = fn.__name__, fn.__qualname__, fn.__doc__, fn
    return op


for _name in __all__:
    if _name not in ("shape", "convert_to_tensor", "arange", "zeros", "ones", "full", "eye"):
        globals()[_name] = _symbolic_aware(_name, globals()[_name])
del _name
