"""Tensor and Variable: what user code and layers hold during a call.

A Tensor wraps one numpy or CuPy array (`.value`) and, while a GradientTape records, knows
whether a gradient flows through it (`_rg`). The arithmetic operators are differentiable ops
defined here (they are what `a + b` means); the rest of the op library is `kilnet.ops`.

A Variable is a weight: a handle to the array a layer holds (`owner.<attr>`), which a model
re-points into its one flat parameter buffer, and to the gradient array beside it
(`owner.d<attr>`), a view into the flat gradient buffer. Reading `.value` always sees where the
weight lives now, so the optimizer's one fused update reaches every Variable.
"""
from __future__ import annotations

import numpy as np

from kilnet.backend import device_of, xp_for
from kilnet.engine import precision
from kilnet.engine.tape import record, register_tensor_type

__all__ = ["Tensor", "Variable", "as_tensor", "value_of", "unbroadcast", "same_device", "cast", "compute_cast",
           "round_through"]


class Tensor:
    __slots__ = ("_value", "_rg", "_keras_logits", "_keras_mask", "__weakref__")
    __array_priority__ = 100      # numpy defers `array + tensor` to Tensor.__radd__

    def __init__(self, value, rg=False):
        self._value = value
        self._rg = rg
        self._keras_logits = None   # (activation name, logits Tensor) for a softmax/sigmoid output
        self._keras_mask = None     # a boolean array (batch, steps): which steps are real (Keras's mask)

    # -------------------------------------------------------------- the array
    @property
    def value(self):
        return self._value

    @property
    def shape(self):
        return tuple(self.value.shape)

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def ndim(self):
        return self.value.ndim

    @property
    def size(self):
        return self.value.size

    @property
    def device(self) -> str:
        return device_of(self.value)

    def _xp(self):
        return xp_for(self.value)

    def numpy(self) -> np.ndarray:
        v = self.value
        return np.array(v) if isinstance(v, np.ndarray) else v.get()

    def __array__(self, dtype=None, copy=None):
        a = self.value if isinstance(self.value, np.ndarray) else self.value.get()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __len__(self):
        return len(self.value)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __float__(self):
        return float(self.value)

    def __int__(self):
        return int(self.value)

    def __index__(self):
        return int(self.value)

    def __bool__(self):
        return bool(self.value)

    def __format__(self, spec):
        return format(self.value.item(), spec) if self.value.size == 1 else format(self.numpy(), spec)

    def __repr__(self):
        return f"<kilnet.Tensor shape={self.shape} dtype={self.dtype} device={self.device}\n{self.value!r}>"

    __hash__ = object.__hash__

    # -------------------------------------------------------------- operators
    def __add__(self, o): return add(self, o)
    def __radd__(self, o): return add(o, self)
    def __sub__(self, o): return subtract(self, o)
    def __rsub__(self, o): return subtract(o, self)
    def __mul__(self, o): return multiply(self, o)
    def __rmul__(self, o): return multiply(o, self)
    def __truediv__(self, o): return divide(self, o)
    def __rtruediv__(self, o): return divide(o, self)
    def __matmul__(self, o): return matmul(self, o)
    def __rmatmul__(self, o): return matmul(o, self)
    def __pow__(self, o): return power(self, o)
    def __rpow__(self, o): return power(o, self)
    def __neg__(self): return negative(self)
    def __pos__(self): return self
    def __getitem__(self, idx): return getitem(self, idx)

    # comparisons give boolean tensors that carry no gradient
    def __eq__(self, o): return Tensor(self.value == value_of(o))
    def __ne__(self, o): return Tensor(self.value != value_of(o))
    def __lt__(self, o): return Tensor(self.value < value_of(o))
    def __le__(self, o): return Tensor(self.value <= value_of(o))
    def __gt__(self, o): return Tensor(self.value > value_of(o))
    def __ge__(self, o): return Tensor(self.value >= value_of(o))

    @property
    def T(self):
        return transpose(self)

    def reshape(self, *shape):
        return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def astype(self, dtype):
        return cast(self, dtype)


register_tensor_type(Tensor)


class _Holder:
    """Storage of a Variable made on its own (not by a layer): `.value` and `.dvalue`."""
    trainable = True


class Variable(Tensor):
    """A weight. `kilnet.Variable(initializer, shape=None, dtype="float32", trainable=True,
    name=None)` as in Keras 3; layers make theirs with `add_weight`."""
    __slots__ = ("_owner", "_attr", "trainable", "name", "path")

    def __init__(self, initializer=None, shape=None, dtype="float32", trainable=True, name=None, *,
                 _owner=None, _attr=None):
        Tensor.__init__(self, None, bool(trainable))
        self.trainable = bool(trainable)
        if _owner is None:
            value = _initial_value(initializer, shape, dtype)
            _owner, _attr = _Holder(), "value"
            _owner.value = value
            _owner.dvalue = np.zeros_like(value) if trainable else None
            name = name or "variable"
        self._owner, self._attr = _owner, _attr
        self.name = name or _attr
        self.path = self.name

    @property
    def value(self):
        return getattr(self._owner, self._attr)

    def _grad_array(self):
        return getattr(self._owner, "d" + self._attr)

    @property
    def _rg(self):
        return self.trainable

    @_rg.setter
    def _rg(self, v):   # watching a non-trainable variable: TensorFlow allows it; so do we
        pass

    def assign(self, value):
        """Copy value into the weight in place (its shape must match)."""
        dst = self.value
        v = value_of(value)
        if tuple(np.shape(v)) != tuple(dst.shape):
            raise ValueError(f"Variable {self.name!r}: cannot assign a value of shape {tuple(np.shape(v))} "
                             f"to a variable of shape {tuple(dst.shape)}")
        if isinstance(dst, np.ndarray):
            np.copyto(dst, np.asarray(v if isinstance(v, np.ndarray) or not hasattr(v, "get") else v.get()),
                      casting="unsafe")
        else:
            dst[...] = xp_for(dst).asarray(v, dtype=dst.dtype)
        return self

    def assign_add(self, value):
        return self.assign(self.value + value_of(value))

    def assign_sub(self, value):
        return self.assign(self.value - value_of(value))

    def __repr__(self):
        return f"<kilnet.Variable path={self.path!r} shape={self.shape} dtype={self.dtype}>"


def _initial_value(initializer, shape, dtype):
    from kilnet import initializers
    if callable(initializer) or isinstance(initializer, str):
        if shape is None:
            raise ValueError("Variable: shape= is needed with an initializer")
        return np.ascontiguousarray(initializers.get(initializer)(tuple(shape)), dtype=dtype)
    value = np.array(value_of(initializer), dtype=dtype)
    if shape is not None and tuple(shape) != value.shape:
        raise ValueError(f"Variable: initial value of shape {value.shape} does not match shape={tuple(shape)}")
    return value


# ------------------------------------------------------------------ conversion helpers
def value_of(x):
    """The array (or Python number) behind x."""
    return x.value if isinstance(x, Tensor) else x


def as_tensor(x, dtype=None) -> Tensor:
    """x as a Tensor: Tensors and Variables as they are, arrays and numbers wrapped (no grad)."""
    if isinstance(x, Tensor):
        return x if dtype is None or x.dtype == dtype else cast(x, dtype)
    if isinstance(x, np.ndarray) or hasattr(x, "__cuda_array_interface__"):
        return Tensor(x if dtype is None else x.astype(dtype, copy=False))
    if dtype is None and isinstance(x, float):
        dtype = np.float32    # Keras's floatx
    return Tensor(np.asarray(x, dtype=dtype))


def same_device(*xs):
    """The array module of the operands; ValueError when they live on two devices."""
    dev = None
    for x in xs:
        v = x.value if isinstance(x, Tensor) else x
        if isinstance(v, np.ndarray) or not hasattr(v, "__cuda_array_interface__"):
            d = "cpu" if isinstance(v, np.ndarray) else None
        else:
            d = "cuda"
        if d is None:
            continue
        if dev is None:
            dev = d
        elif d != dev:
            raise ValueError(f"operands live on two devices (cpu and cuda); move them to one first "
                             f"(model.to(...) or kilnet.ops.convert_to_tensor on that device)")
    if dev == "cuda":
        import cupy
        return cupy
    return np


def _array(r):
    """numpy gives scalars for 0-d results; a Tensor always holds an array."""
    return r if hasattr(r, "flags") else np.asarray(r)


def unbroadcast(g, shape):
    """Sum g over the axes numpy broadcasting added or stretched, back to `shape`."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _binary(a, b, fwd, rule):
    """A broadcasting binary op; rule(g, av, bv, y) -> (da, db) before unbroadcasting."""
    same_device(a, b)
    av, bv = value_of(a), value_of(b)
    y = Tensor(_array(fwd(av, bv)))
    ins = tuple(t for t in (a, b) if isinstance(t, Tensor))
    if ins:
        def bw(g, needs, a=a, b=b):
            da, db = rule(g, av, bv, y.value)
            out = []
            for t, d in ((a, da), (b, db)):
                if isinstance(t, Tensor):
                    # (a bfloat16 operand's gradient stays float32: precision.grad_as)
                    out.append(None if d is None else precision.grad_as(unbroadcast(d, t.value.shape), t.value.dtype))
            return out
        record(ins, (y,), bw)
    return y


def add(a, b):
    return _binary(a, b, _add_values, lambda g, x, y, z: (g, g))


def _add_values(x, y):
    """x + y; two bfloat16 numpy arrays of one shape add on our kernel (one rounding, as
    ml_dtypes' own add, which is about 5x slower)."""
    if type(x) is np.ndarray and type(y) is np.ndarray and x.shape == y.shape and x.size \
            and precision.is_bf16(x.dtype) and precision.is_bf16(y.dtype):
        from kilnet.backend import cpu
        out = np.empty(x.shape, x.dtype)
        cpu.add_bfloat16(np.ascontiguousarray(x), np.ascontiguousarray(y), out)
        return out
    return x + y


def subtract(a, b):
    return _binary(a, b, lambda x, y: x - y, lambda g, x, y, z: (g, -g))


def multiply(a, b):
    return _binary(a, b, lambda x, y: x * y, lambda g, x, y, z: (g * y, g * x))


def divide(a, b):
    return _binary(a, b, lambda x, y: x / y, lambda g, x, y, z: (g / y, -g * z / y))


def power(a, b):
    def rule(g, x, y, z):
        xp = xp_for(z)
        dx = g * y * x ** (y - 1) if not (isinstance(y, (int, float)) and y == 0) else None
        dy = None
        if isinstance(b, Tensor):
            safe = xp.where(x > 0, x, 1)
            dy = g * z * xp.log(safe)
        return dx, dy
    return _binary(a, b, lambda x, y: x ** y, rule)


def negative(a):
    a = as_tensor(a)
    y = Tensor(_array(-a.value))
    record((a,), (y,), lambda g, needs: (-g,))
    return y


def matmul(a, b):
    """numpy's matmul (batched, broadcasting); 2-D float32 products on our own GEMM kernel."""
    xp = same_device(a, b)
    a, b = as_tensor(a), as_tensor(b)
    av, bv = a.value, b.value
    if av.ndim == 0 or bv.ndim == 0:
        raise ValueError(f"matmul: operands must be at least 1-D, got shapes {av.shape} and {bv.shape}")
    if av.shape[-1] != bv.shape[-2 if bv.ndim > 1 else 0]:
        raise ValueError(f"matmul: shapes {av.shape} and {bv.shape} do not fit (inner sizes "
                         f"{av.shape[-1]} and {bv.shape[-2 if bv.ndim > 1 else 0]})")
    low = _bf16_gemm_dtype(av, bv)
    if low is not None:
        return _matmul_bf16(a, b, low, precision.is_bf16(av.dtype) and precision.is_bf16(bv.dtype))
    y = Tensor(_mm(xp, av, bv))

    def bw(g, needs):
        if av.ndim == 1 and bv.ndim == 1:   # a dot product: g is 0-d
            return (g * bv if needs[0] else None), (g * av if needs[1] else None)
        if bv.ndim == 2 and av.ndim >= 2 and _gemm_ok(av, bv, g):
            # (..., K) @ (K, N), the layers' case: both gradients are single GEMMs over the
            # flattened rows (no batched products, no reduction over a broadcast batch)
            da = _mm_nt(xp, g, bv).reshape(av.shape) if needs[0] else None
            db = _mm_tn(xp, av.reshape(-1, av.shape[-1]), g.reshape(-1, g.shape[-1])) if needs[1] else None
            return da, db
        a2 = av[None, :] if av.ndim == 1 else av
        b2 = bv[:, None] if bv.ndim == 1 else bv
        g2 = g
        if av.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        if bv.ndim == 1:
            g2 = xp.expand_dims(g2, -1)
        da = db = None
        if needs[0]:
            da = _mm(xp, g2, xp.swapaxes(b2, -1, -2))
            da = unbroadcast(da, a2.shape).reshape(av.shape)
        if needs[1]:
            db = _mm(xp, xp.swapaxes(a2, -1, -2), g2)
            db = unbroadcast(db, b2.shape).reshape(bv.shape)
        return da, db
    record((a, b), (y,), bw)
    return y


def linear(x, w, b=None, out=None):
    """x @ w (+ b) for x (..., K), w (K, N) and b (N,): one GEMM with the bias in its epilogue
    and one tape node (dx = g wᵀ, dw = xᵀ g, db = the column sums of g), where `matmul(x, w) + b`
    is two ops, a separate pass over the output and a numpy reduction for db. Under a bfloat16
    policy (or with bfloat16 x and w) it runs on the bfloat16 GEMM; `out` says what it returns
    there: None, matmul's rule (bfloat16 operands: bfloat16; autocast: float32 holding the
    bfloat16-rounded result), "low" the bfloat16 result itself (a layer's output), "float32" the
    float32 sums unrounded (for float32 kernels after it). Other operands take the composed ops."""
    if out not in (None, "low", "float32"):
        raise ValueError(f"linear: out must be None, 'low' or 'float32', got {out!r}")
    same_device(x, w, *(() if b is None else (b,)))
    x, w = as_tensor(x), as_tensor(w)
    b = None if b is None else as_tensor(b)
    xv, wv = x.value, w.value
    n = wv.shape[-1] if wv.ndim else 0
    if b is not None and wv.ndim == 2 and b.value.shape != (n,):
        raise ValueError(f"linear: bias of shape {tuple(b.value.shape)} does not match the {n} output columns "
                         f"of a weight of shape {tuple(wv.shape)}")
    fits = xv.ndim >= 2 and wv.ndim == 2 and xv.shape[-1] == wv.shape[0] and xv.size and wv.size \
        and (b is None or (b.value.shape == (n,) and b.value.dtype == np.float32))
    low = _bf16_gemm_dtype(xv, wv) if fits else None
    if not fits or (low is None and not _gemm_ok(xv, wv)):
        y = matmul(x, w)
        return y if b is None else add(y, b)
    from kilnet.backend import kernels_for
    xp, k = xp_for(xv), kernels_for(xv)
    x2 = xp.ascontiguousarray(xv).reshape(-1, xv.shape[-1])
    bv = None if b is None else xp.ascontiguousarray(b.value)
    if low is not None and out == "float32":
        c = np.empty((x2.shape[0], n), np.float32)
        k.gemm_bf16(_bf16_operand(x2), _bf16_operand(wv), c, bias=bv)
    elif low is not None:
        c = _gemm_bf16_low(x2, wv, low, bv)
        if out is None and not (precision.is_bf16(xv.dtype) and precision.is_bf16(wv.dtype)):   # autocast
            c = precision.convert(c, np.dtype(np.float32))
    else:
        c = xp.empty((x2.shape[0], n), np.float32)
        k.gemm(x2, xp.ascontiguousarray(wv), c, bias=bv)
    y = Tensor(c.reshape(xv.shape[:-1] + (n,)))

    def bw(g, needs):
        g2 = xp.ascontiguousarray(g).reshape(-1, n)
        db = None
        if low is not None:
            dx = precision.grad_as(_gemm_bf16(g2, wv, trans_b=True), xv.dtype).reshape(xv.shape) if needs[0] else None
            if b is not None and needs[1] and needs[2]:   # db from the GEMM's packing of g
                db = np.zeros((n,), np.float32)
            dw = precision.grad_as(_gemm_bf16(x2, g2, trans_a=True, colsum=db), wv.dtype) if needs[1] else None
        else:
            dx = _mm_nt(xp, g2, wv).reshape(xv.shape) if needs[0] else None
            if b is not None and needs[1] and needs[2] and g2.dtype == np.float32:   # db from dW's packing of g
                db = xp.zeros((n,), np.float32)
            dw = _mm_tn(xp, x2, g2, colsum=db) if needs[1] else None
        if b is None:
            return dx, dw
        if needs[2] and db is None:
            db = xp.zeros((n,), np.float32)
            k.bias_backward(g2 if g2.dtype == np.float32 else g2.astype(np.float32), db)
        return dx, dw, db
    record((x, w) if b is None else (x, w, b), (y,), bw)
    return y


def _bf16_gemm_dtype(av, bv):
    """bfloat16 when this product runs on the bfloat16 GEMM: numpy operands (..., K) @ (K, N),
    both bfloat16, or both float inside a layer call under a bfloat16 policy (Keras autocasts
    them); else None."""
    if type(av) is not np.ndarray or type(bv) is not np.ndarray or av.ndim < 2 or bv.ndim != 2 \
            or not av.size or not bv.size:
        return None
    da, db = av.dtype, bv.dtype
    if precision.is_bf16(da) and precision.is_bf16(db):
        return da
    auto = precision.autocast_dtype()
    if auto is not None and precision.is_bf16(auto) and precision.is_float(da) and precision.is_float(db) \
            and da.itemsize <= 4 and db.itemsize <= 4:
        return auto
    return None


def _gemm_bf16(a2, b2, trans_a=False, trans_b=False, colsum=None):
    """op(a2) @ op(b2) with bfloat16 products and float32 sums (float32 result); float32
    operands are rounded to bfloat16 while packed. colsum: += op(b2)'s column sums (float32)."""
    from kilnet.backend import cpu
    a2, b2 = _bf16_operand(a2), _bf16_operand(b2)
    m = a2.shape[1] if trans_a else a2.shape[0]
    n = b2.shape[0] if trans_b else b2.shape[1]
    c = np.empty((m, n), np.float32)
    cpu.gemm_bf16(a2, b2, c, trans_a, trans_b, colsum=colsum)
    return c


def _gemm_bf16_low(a2, b2, low, bias=None):
    """a2 @ b2 (+ bias) as a bfloat16 array: the float32 sum rounded once, in the GEMM."""
    from kilnet.backend import cpu
    c = np.empty((a2.shape[0], b2.shape[1]), low)
    cpu.gemm_bf16(_bf16_operand(a2), _bf16_operand(b2), c, bias=bias)
    return c


def _bf16_operand(x):
    x = np.ascontiguousarray(x)
    return x if x.dtype == np.float32 or precision.is_bf16(x.dtype) else x.astype(np.float32)


def _matmul_bf16(a, b, low, as_low):
    """matmul on the bfloat16 GEMM (gradients float32, see precision.grad_as). as_low (two bfloat16
    operands): a bfloat16 result; else (autocast) float32 holding bfloat16-rounded values, so
    that the float32 ops after it in the layer's call() keep running on their kernels."""
    av, bv = a.value, b.value
    a2 = av.reshape(-1, av.shape[-1])
    c = _gemm_bf16_low(a2, bv, low)
    if not as_low:
        c = precision.convert(c, np.dtype(np.float32))
    y = Tensor(c.reshape(av.shape[:-1] + (bv.shape[1],)))

    def bw(g, needs):
        g2 = g.reshape(-1, g.shape[-1])
        da = precision.grad_as(_gemm_bf16(g2, bv, trans_b=True), av.dtype).reshape(av.shape) if needs[0] else None
        db = precision.grad_as(_gemm_bf16(a2, g2, trans_a=True), bv.dtype) if needs[1] else None
        return da, db
    record((a, b), (y,), bw)
    return y


def _gemm_ok(*arrays) -> bool:
    return all(x.dtype == np.float32 and x.size for x in arrays)


def _mm(xp, a, b):
    """a @ b; float32 (..., K) @ (K, N) runs as one GEMM of our own over the flattened rows."""
    if a.ndim >= 2 and b.ndim == 2 and _gemm_ok(a, b):
        from kilnet.backend import kernels_for
        a2 = xp.ascontiguousarray(a).reshape(-1, a.shape[-1])
        c = xp.empty((a2.shape[0], b.shape[1]), np.float32)
        kernels_for(a).gemm(a2, xp.ascontiguousarray(b), c)
        return c.reshape(a.shape[:-1] + (b.shape[1],))
    return xp.matmul(a, b)


def _mm_nt(xp, g, b):
    """g @ b.T for float32 g (..., N) and b (K, N), one GEMM."""
    from kilnet.backend import kernels_for
    g2 = xp.ascontiguousarray(g).reshape(-1, g.shape[-1])
    c = xp.empty((g2.shape[0], b.shape[0]), np.float32)
    kernels_for(g).gemm(g2, xp.ascontiguousarray(b), c, trans_b=True)
    return c


def _mm_tn(xp, a2, g2, colsum=None):
    """a2.T @ g2 for float32 a2 (M, K) and g2 (M, N), one GEMM; colsum += g2's column sums."""
    from kilnet.backend import kernels_for
    c = xp.empty((a2.shape[1], g2.shape[1]), np.float32)
    kernels_for(a2).gemm(xp.ascontiguousarray(a2), xp.ascontiguousarray(g2), c, trans_a=True, colsum=colsum)
    return c


def getitem(a, idx):
    a = as_tensor(a)
    idx = _plain_index(idx)
    y = Tensor(_array(a.value[idx]))

    def bw(g, needs):
        xp = xp_for(g)
        d = xp.zeros(a.value.shape, g.dtype)
        if _basic_index(idx):
            d[idx] = g
        else:   # fancy indexing may repeat an element: scatter-add
            xp.add.at(d, idx, g)
        return (d,)
    record((a,), (y,), bw)
    return y


def _plain_index(idx):
    if isinstance(idx, Tensor):
        return idx.value
    if isinstance(idx, tuple):
        return tuple(i.value if isinstance(i, Tensor) else i for i in idx)
    return idx


def _basic_index(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice, np.integer)) for i in items)


def reshape(a, shape):
    a = as_tensor(a)
    shape = tuple(int(s) for s in shape)
    try:
        y = Tensor(a.value.reshape(shape))
    except ValueError:
        raise ValueError(f"reshape: cannot reshape a tensor of shape {a.shape} ({a.size} values) to {shape}") from None
    record((a,), (y,), lambda g, needs: (g.reshape(a.value.shape),))
    return y


def transpose(a, axes=None):
    a = as_tensor(a)
    xp = a._xp()
    if axes is not None:
        axes = tuple(int(ax) % a.ndim for ax in axes)
    y = Tensor(xp.transpose(a.value, axes))
    inv = None if axes is None else tuple(int(i) for i in np.argsort(axes))
    record((a,), (y,), lambda g, needs: (xp.transpose(g, inv),))
    return y


def cast(a, dtype):
    """a as dtype (a copy); between float dtypes (bfloat16 included) the gradient flows back,
    cast to a's dtype."""
    a = as_tensor(a)
    dtype = precision.np_dtype(dtype)
    src = a.value.dtype
    y = Tensor(precision.convert(a.value, dtype) if src != dtype else a.value.copy())
    if precision.is_float(dtype) and precision.is_float(src):
        record((a,), (y,), lambda g, needs: (precision.grad_as(g, src),))
    return y


def compute_cast(a, dtype):
    """A layer boundary's cast to its compute dtype (no copy when a has it already)."""
    if a.value.dtype == dtype:
        return a
    return cast(a, dtype)


def round_through(a, dtype):
    """a's values rounded to the low dtype (bfloat16/float16), as float32: what a layer without a
    kernel for that dtype computes on. The gradient is rounded the same way (it is the
    gradient passes through in float32 (precision.grad_as)."""
    f32 = np.dtype(np.float32)
    v = a.value
    y = Tensor(precision.convert(v, f32) if v.dtype == dtype else precision.round_through(precision.convert(v, f32), dtype))
    src = v.dtype
    record((a,), (y,), lambda g, needs: (precision.grad_as(g, src),))
    return y
