"""Shape and array ops (keras.ops names): reshaping, joining, splitting, gathering, top_k, and
the non-differentiable shape/one_hot/stop_gradient. Gradients route the output gradient back to
where each element came from."""
from __future__ import annotations

import numpy as np

from kilnet.engine import tensor as _t
from kilnet.engine.tape import record
from kilnet.engine.tensor import Tensor, as_tensor, same_device, value_of
from kilnet.ops._base import grad_like, norm_axes, scatter_add, wrap

__all__ = ["reshape", "transpose", "swapaxes", "moveaxis", "tile", "expand_dims", "squeeze", "concatenate", "stack", "split", "take",
           "broadcast_to", "one_hot", "top_k", "shape", "stop_gradient"]


def reshape(x, newshape):
    """x with a new shape (an int or a tuple; one entry may be -1)."""
    if isinstance(newshape, (int, np.integer)):
        newshape = (int(newshape),)
    return _t.reshape(x, tuple(value_of(s) for s in newshape))


def transpose(x, axes=None):
    """x with its axes permuted (reversed when axes is None); negative axes allowed."""
    x = as_tensor(x)
    if axes is not None:
        axes = tuple(axes)
        norm = norm_axes(axes, x.ndim, "transpose", x.shape)
        if len(axes) != x.ndim or norm != tuple(range(x.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the {x.ndim} axes of a "
                             f"tensor of shape {x.shape}")
        axes = tuple(a % x.ndim for a in axes)
    return _t.transpose(x, axes)


def swapaxes(x, axis1, axis2):
    x = as_tensor(x)
    a, b = (norm_axes(ax, x.ndim, "swapaxes", x.shape)[0] for ax in (axis1, axis2))
    perm = list(range(x.ndim))
    perm[a], perm[b] = perm[b], perm[a]
    return _t.transpose(x, tuple(perm))


def moveaxis(x, source, destination):
    x = as_tensor(x)
    src = [int(s) for s in (source if isinstance(source, (tuple, list)) else (source,))]
    dst = [int(d) for d in (destination if isinstance(destination, (tuple, list)) else (destination,))]
    if len(src) != len(dst):
        raise ValueError(f"moveaxis: source {source} and destination {destination} differ in length")
    norm_axes(src, x.ndim, "moveaxis", x.shape)
    norm_axes(dst, x.ndim, "moveaxis", x.shape)
    src, dst = [s % x.ndim for s in src], [d % x.ndim for d in dst]
    perm = [i for i in range(x.ndim) if i not in src]
    for d, s in sorted(zip(dst, src)):
        perm.insert(d, s)
    return _t.transpose(x, tuple(perm))


def tile(x, repeats):
    """x repeated `repeats` times along each axis (numpy's tile); the gradient sums the copies."""
    x = as_tensor(x)
    xp = same_device(x)
    reps = (int(repeats),) if isinstance(repeats, (int, np.integer)) else tuple(int(r) for r in repeats)
    if any(r < 0 for r in reps):
        raise ValueError(f"tile: negative repeats {reps}")
    nd = max(len(reps), x.ndim)
    shape = (1,) * (nd - x.ndim) + x.shape
    reps = (1,) * (nd - len(reps)) + reps
    y = wrap(xp, xp.tile(x.value.reshape(shape), reps))
    if x._rg:
        def bw(g, needs):
            inter = tuple(v for r, s in zip(reps, shape) for v in (r, s))
            d = g.reshape(inter).sum(axis=tuple(range(0, 2 * nd, 2)))
            return (grad_like(d.reshape(x.shape), x.value),)
        record((x,), (y,), bw)
    return y


def _reshape_op(x, shape):
    """A view op whose gradient is the output gradient reshaped back."""
    xv = x.value
    y = Tensor(xv.reshape(shape))
    if x._rg:
        record((x,), (y,), lambda g, needs: (g.reshape(xv.shape),))
    return y


def expand_dims(x, axis):
    """x with a new axis of size 1 at axis (an int or a tuple, counted in the output)."""
    x = as_tensor(x)
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    nd = x.ndim + len(items)
    axes = norm_axes(items, nd, "expand_dims", x.shape)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return _reshape_op(x, tuple(shape))


def squeeze(x, axis=None):
    """x without its size-1 axes (or only those named by axis, which must have size 1)."""
    x = as_tensor(x)
    if axis is None:
        shape = tuple(s for s in x.shape if s != 1)
    else:
        axes = norm_axes(axis, x.ndim, "squeeze", x.shape)
        bad = [a for a in axes if x.shape[a] != 1]
        if bad:
            raise ValueError(f"squeeze: axis {bad[0]} of a tensor of shape {x.shape} has size "
                             f"{x.shape[bad[0]]}, not 1")
        shape = tuple(s for i, s in enumerate(x.shape) if i not in axes)
    return _reshape_op(x, shape)


def broadcast_to(x, shape):
    x = as_tensor(x)
    xp = same_device(x)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    try:
        yv = xp.broadcast_to(x.value, shape)
    except ValueError:
        raise ValueError(f"broadcast_to: cannot broadcast a tensor of shape {x.shape} to {shape}") from None
    y = Tensor(xp.ascontiguousarray(yv))
    if x._rg:
        record((x,), (y,), lambda g, needs: (grad_like(_t.unbroadcast(g, x.shape), x.value),))
    return y


def _many(xs, op):
    if isinstance(xs, Tensor) or not isinstance(xs, (list, tuple)):
        raise TypeError(f"{op}: expects a list or tuple of tensors, got {type(xs).__name__}")
    if not xs:
        raise ValueError(f"{op}: needs at least one tensor")
    xp = same_device(*xs)
    ts = [as_tensor(x) for x in xs]
    if xp is not np:   # numbers and numpy arrays join the GPU operands
        ts = [t if not isinstance(t.value, np.ndarray) else Tensor(xp.asarray(t.value)) for t in ts]
    return xp, ts


def concatenate(xs, axis=0):
    """The tensors joined along axis; all other sizes must agree."""
    xp, ts = _many(xs, "concatenate")
    shapes = [t.shape for t in ts]
    nd = ts[0].ndim
    if nd == 0 or any(t.ndim != nd for t in ts):
        raise ValueError(f"concatenate: all tensors need the same number (>= 1) of dimensions, got shapes {shapes}")
    (a,) = norm_axes(axis, nd, "concatenate", shapes[0])
    for s in shapes:
        if s[:a] + s[a + 1:] != shapes[0][:a] + shapes[0][a + 1:]:
            raise ValueError(f"concatenate: shapes {shapes} differ outside axis {axis}")
    y = wrap(xp, xp.concatenate([t.value for t in ts], axis=a))
    if any(t._rg for t in ts):
        bounds = np.cumsum([0] + [s[a] for s in shapes])

        def bw(g, needs):
            sl = [slice(None)] * nd
            out = []
            for i, need in enumerate(needs):
                if not need:
                    out.append(None)
                    continue
                sl[a] = slice(int(bounds[i]), int(bounds[i + 1]))
                out.append(grad_like(xp.ascontiguousarray(g[tuple(sl)]), ts[i].value))
            return out
        record(tuple(ts), (y,), bw)
    return y


def stack(x, axis=0):
    """The tensors (all of one shape) joined along a new axis."""
    xp, ts = _many(x, "stack")
    shapes = [t.shape for t in ts]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"stack: all tensors need the same shape, got {shapes}")
    (a,) = norm_axes(axis, ts[0].ndim + 1, "stack", shapes[0])
    y = wrap(xp, xp.stack([t.value for t in ts], axis=a))
    if any(t._rg for t in ts):
        def bw(g, needs):
            return [grad_like(xp.ascontiguousarray(xp.take(g, i, axis=a)), ts[i].value) if need else None
                    for i, need in enumerate(needs)]
        record(tuple(ts), (y,), bw)
    return y


def split(x, indices_or_sections, axis=0):
    """A list of tensors: x cut into equal sections (an int, which must divide the size) or at
    the given indices along axis."""
    x = as_tensor(x)
    xp = same_device(x)
    if x.ndim == 0:
        raise ValueError("split: cannot split a scalar")
    (a,) = norm_axes(axis, x.ndim, "split", x.shape)
    n = x.shape[a]
    if isinstance(indices_or_sections, (int, np.integer)):
        k = int(indices_or_sections)
        if k <= 0 or n % k:
            raise ValueError(f"split: axis {axis} of size {n} (shape {x.shape}) cannot be split into "
                             f"{k} equal sections")
        cuts = [n // k * i for i in range(1, k)]
    else:
        cuts = [int(i) for i in indices_or_sections]
    bounds = [0] + [min(max(c, 0), n) for c in cuts] + [n]
    sl = [slice(None)] * x.ndim
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sl[a] = slice(lo, max(lo, hi))
        parts.append(Tensor(x.value[tuple(sl)]))
    if x._rg:
        def bw(gs, needs):
            d = xp.zeros(x.shape, x.dtype)
            s2 = [slice(None)] * x.ndim
            for g, lo, hi in zip(gs, bounds[:-1], bounds[1:]):
                if g is not None:
                    s2[a] = slice(lo, max(lo, hi))
                    d[tuple(s2)] += g
            return (d,)
        record((x,), tuple(parts), bw)
    return parts


def take(x, indices, axis=None):
    """Elements of x at integer indices along axis (of the flattened x when axis is None);
    numpy semantics, negative indices counting from the end."""
    x = as_tensor(x)
    xp = same_device(x)
    idx = value_of(indices)
    if not hasattr(idx, "dtype") or (xp is not np and isinstance(idx, np.ndarray)):
        idx = xp.asarray(idx)    # host indices (lists, numpy) follow the data to its device
    if idx.dtype.kind not in "iu":
        if idx.size == 0:
            idx = idx.astype(np.int64)
        else:
            raise TypeError(f"take: indices must be integers, got dtype {idx.dtype}")
    xv = x.value if axis is not None else x.value.reshape(-1)
    if axis is None:
        a = 0
    else:
        (a,) = norm_axes(axis, xv.ndim, "take", xv.shape)
    n = xv.shape[a]
    if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise ValueError(f"take: indices out of range [{-n}, {n}) for axis {0 if axis is None else axis} "
                         f"of a tensor of shape {x.shape} (min {int(idx.min())}, max {int(idx.max())})")
    y = wrap(xp, xp.take(xv, idx, axis=a))
    if x._rg:
        def bw(g, needs):
            d = xp.zeros(xv.shape, g.dtype)
            pre, k = a, idx.ndim
            # g: pre + idx.shape + post  ->  idx.shape + pre + post, flattened over idx
            perm = tuple(range(pre, pre + k)) + tuple(range(pre)) + tuple(range(pre + k, g.ndim))
            gm = xp.transpose(g, perm).reshape((-1,) + xv.shape[:a] + xv.shape[a + 1:])
            dm = xp.moveaxis(d, a, 0)
            scatter_add(xp, dm, idx.reshape(-1) % n, gm)
            return (grad_like(d.reshape(x.shape), x.value),)
        record((x,), (y,), bw)
    return y


def one_hot(x, num_classes, axis=-1, dtype=None):
    """Integer labels as one-hot vectors along a new axis (float32 unless dtype=); labels outside
    [0, num_classes) give all-zero vectors (as Keras/TensorFlow). No gradient."""
    x = as_tensor(x)
    xp = same_device(x)
    xv = x.value
    if xv.dtype.kind not in "iub":
        if xv.dtype.kind == "f" and (xv.size == 0 or bool(xp.all(xv == xp.floor(xv)))):
            xv = xv.astype(np.int64)
        else:
            raise TypeError(f"one_hot: labels must be integers, got dtype {xv.dtype}")
    num_classes = int(num_classes)
    if num_classes <= 0:
        raise ValueError(f"one_hot: num_classes must be positive, got {num_classes}")
    y = (xv[..., None] == xp.arange(num_classes)).astype(np.dtype(dtype or "float32"))
    if axis != -1:
        (a,) = norm_axes(axis, xv.ndim + 1, "one_hot", xv.shape)
        y = xp.moveaxis(y, -1, a)
    return wrap(xp, xp.ascontiguousarray(y))


def top_k(x, k, sorted=True):
    """(values, indices) of the k largest entries along the last axis, largest first when
    sorted (ties: lower index first). values are differentiable; indices are int32."""
    x = as_tensor(x)
    xp = same_device(x)
    xv = x.value
    if xv.ndim == 0:
        raise ValueError("top_k: needs at least a 1-D tensor")
    n = xv.shape[-1]
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"top_k: k={k} is out of range for the last axis of a tensor of shape {x.shape}")
    rows = xv.reshape(-1, n)
    order = xp.argsort(-rows, axis=-1, kind="stable") if xp is np else xp.argsort(-rows, axis=-1)
    ind = xp.ascontiguousarray(order[:, :k])
    vals = xp.take_along_axis(rows, ind, axis=-1)
    out_shape = xv.shape[:-1] + (k,)
    values = Tensor(vals.reshape(out_shape))
    indices = Tensor(ind.astype(np.int32).reshape(out_shape))
    if x._rg:
        def bw(g, needs):
            d = xp.zeros(rows.shape, g.dtype)
            flat = (xp.arange(rows.shape[0])[:, None] * n + ind).reshape(-1)
            d.reshape(-1)[flat] = g.reshape(-1)
            return (grad_like(d.reshape(xv.shape), xv),)
        record((x,), (values,), bw)
    return values, indices


def shape(x):
    """The static shape as a tuple of ints (keras.ops.shape)."""
    v = value_of(x)
    if hasattr(v, "shape"):
        return tuple(int(s) for s in v.shape)
    return tuple(np.shape(v))


def stop_gradient(variable):
    """The same values as a Tensor that no gradient flows through."""
    x = as_tensor(variable)
    return Tensor(x.value)
