"""Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot, and their
functional forms (add(...), concatenate(...), ...). Each is a few ops on the tape, so their
gradients come from the ops' rules (broadcasting included)."""
from __future__ import annotations

from kilnet import ops
from kilnet.layers.base import Layer

__all__ = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
           "add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate", "dot"]


class _Merge(Layer):
    """A layer over a list of inputs of one shape (after broadcasting, as Keras allows)."""
    min_inputs = 2

    def _check(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < self.min_inputs:
            raise ValueError(f"{type(self).__name__} {self.name!r} takes a list of at least {self.min_inputs} "
                             f"inputs, got {type(inputs).__name__}" + (f" of {len(inputs)}" if isinstance(inputs, (list, tuple)) else ""))
        return list(inputs)

    def build(self, input_shape):
        self._check(input_shape)
        shapes = [tuple(s) for s in input_shape]
        out = _broadcast_shapes(shapes, self)
        self._out = out

    def compute_output_shape(self, input_shape):
        return _broadcast_shapes([tuple(s) for s in input_shape], self)

    def compute_mask(self, inputs, mask=None):
        """Keras: a step is real in the output where it is real in every masked input."""
        masks = [m for m in (mask or []) if m is not None] if isinstance(mask, (list, tuple)) else []
        if not masks:
            return None
        out = masks[0]
        for m in masks[1:]:
            out = out & m
        return out

    def call(self, inputs):
        xs = self._check(inputs)
        out = xs[0]
        for x in xs[1:]:
            out = self._combine(out, x)
        return self._finish(out, len(xs))

    def _finish(self, out, n):
        return out


def _broadcast_shapes(shapes, layer):
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        dims = {s[len(s) - ndim + i] for s in shapes if len(s) - ndim + i >= 0} - {1}
        known = {d for d in dims if d is not None}
        if len(known) > 1:
            raise ValueError(f"{type(layer).__name__} {layer.name!r}: inputs of shapes "
                             f"{' and '.join(str(s) for s in shapes)} do not match (axis {i - ndim})")
        out.append(known.pop() if known else (None if None in dims else 1))
    return tuple(out)


class Add(_Merge):
    def _computes_low_natively(self) -> bool:
        # under a bfloat16 policy on the CPU the inputs stay bfloat16 and add on the bfloat16
        # kernel (one rounding of the float32 sum: the bits the float32 path gives after its
        # cast), instead of two conversions in and one out
        return self.compute_dtype == "bfloat16" and self.device == "cpu"

    def _combine(self, a, b):
        return ops.add(a, b)


class Subtract(_Merge):
    def _check(self, inputs):
        xs = super()._check(inputs)
        if len(xs) != 2:
            raise ValueError(f"Subtract {self.name!r} takes exactly 2 inputs, got {len(xs)}")
        return xs

    def _combine(self, a, b):
        return ops.subtract(a, b)


class Multiply(_Merge):
    def _combine(self, a, b):
        return ops.multiply(a, b)


class Average(_Merge):
    def _combine(self, a, b):
        return ops.add(a, b)

    def _finish(self, out, n):
        return ops.multiply(out, 1.0 / n)


class Maximum(_Merge):
    def _combine(self, a, b):
        return ops.maximum(a, b)


class Minimum(_Merge):
    def _combine(self, a, b):
        return ops.minimum(a, b)


class Concatenate(Layer):
    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if len(shapes) < 2:
            raise ValueError(f"Concatenate {self.name!r} takes a list of at least 2 inputs")
        nd = len(shapes[0])
        ax = self.axis % nd
        for s in shapes:
            if len(s) != nd or any(a != b and None not in (a, b) for i, (a, b) in enumerate(zip(s, shapes[0]))
                                   if i != ax):
                raise ValueError(f"Concatenate {self.name!r}: inputs of shapes "
                                 f"{' and '.join(str(x) for x in shapes)} differ outside axis {self.axis}")
        size = None if any(s[ax] is None for s in shapes) else sum(s[ax] for s in shapes)
        return tuple(size if i == ax else shapes[0][i] for i in range(nd))

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"Concatenate {self.name!r} takes a list of at least 2 inputs")
        return ops.concatenate(list(inputs), axis=self.axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class Dot(Layer):
    """Dot(axes, normalize=False): per sample, the sum of products over the given axes."""

    def __init__(self, axes, normalize=False, **kwargs):
        super().__init__(**kwargs)
        self.axes = (int(axes), int(axes)) if isinstance(axes, int) else tuple(int(a) for a in axes)
        if len(self.axes) != 2:
            raise ValueError(f"Dot {self.name!r}: axes must be an int or a pair, got {axes!r}")
        self.normalize = bool(normalize)

    def _norm_axes(self, a_nd, b_nd):
        return tuple(ax % nd if ax < 0 else ax for ax, nd in zip(self.axes, (a_nd, b_nd)))

    def compute_output_shape(self, input_shape):
        a, b = (tuple(s) for s in input_shape)
        ia, ib = self._norm_axes(len(a), len(b))
        if ia == 0 or ib == 0:
            raise ValueError(f"Dot {self.name!r}: cannot contract the batch axis")
        if a[ia] is not None and b[ib] is not None and a[ia] != b[ib]:
            raise ValueError(f"Dot {self.name!r}: inputs of shapes {a} and {b} differ on the contracted axes "
                             f"({a[ia]} and {b[ib]})")
        out = [a[0]] + [d for i, d in enumerate(a) if i not in (0, ia)] + \
              [d for i, d in enumerate(b) if i not in (0, ib)]
        return tuple(out) if len(out) > 1 else (a[0], 1)

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"Dot {self.name!r} takes a list of exactly 2 inputs")
        a, b = inputs
        ia, ib = self._norm_axes(len(a.shape), len(b.shape))
        if self.normalize:
            a = a / ops.sqrt(ops.sum(a * a, axis=ia, keepdims=True))
            b = b / ops.sqrt(ops.sum(b * b, axis=ib, keepdims=True))
        la = ["z"] + [chr(ord("a") + i) for i in range(len(a.shape) - 1)]
        lb = ["z"] + [chr(ord("n") + i) for i in range(len(b.shape) - 1)]
        lb[ib] = la[ia]
        out = ["z"] + [c for i, c in enumerate(la) if i not in (0, ia)] + \
              [c for i, c in enumerate(lb) if i not in (0, ib)]
        sa, sb, out = "".join(la), "".join(lb), "".join(out)
        y = ops.einsum(f"{sa},{sb}->{out}", a, b)
        return ops.expand_dims(y, -1) if len(y.shape) == 1 else y

    def get_config(self):
        return {**super().get_config(), "axes": list(self.axes), "normalize": self.normalize}


def _functional(cls):
    def fn(inputs, **kwargs):
        return cls(**kwargs)(inputs)
    fn.__name__ = cls.__name__.lower()
    fn.__doc__ = f"`{fn.__name__}(inputs, **kwargs)`: the {cls.__name__} layer applied to a list of inputs."
    return fn


add, subtract, multiply, average = (_functional(c) for c in (Add, Subtract, Multiply, Average))
maximum, minimum, concatenate = (_functional(c) for c in (Maximum, Minimum, Concatenate))


def dot(inputs, axes=-1, **kwargs):
    """`dot(inputs, axes)`: the Dot layer applied to two inputs."""
    return Dot(axes=axes, **kwargs)(inputs)
