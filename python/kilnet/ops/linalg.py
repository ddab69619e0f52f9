"""einsum (matmul itself is the engine's, on our GEMM kernel): the forward through the array
module's einsum, each operand's gradient another einsum of the output gradient with the other
operands, broadcast over the indices that only that operand sums."""
from __future__ import annotations

import numpy as np

from kilnet.engine.tape import record
from kilnet.engine.tensor import as_tensor, same_device
from kilnet.ops._base import grad_like, wrap

__all__ = ["einsum"]

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _parse(subscripts, shapes):
    """(input subscripts as lists of letters, output letters, {letter: size}) with '...' made
    explicit; ValueError for what the gradient rule does not cover."""
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum: subscripts must be a string, got {type(subscripts).__name__}")
    s = subscripts.replace(" ", "")
    lhs, arrow, rhs = s.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise ValueError(f"einsum: {subscripts!r} names {len(ins)} operand(s), got {len(shapes)}")
    used = set(c for c in s if c.isalpha())
    bad = set(c for c in s if not (c.isalpha() or c in ",->."))
    if bad:
        raise ValueError(f"einsum: invalid characters {sorted(bad)} in {subscripts!r}")
    free = [c for c in _LETTERS if c not in used]
    ell_nd = 0
    for sub, shp in zip(ins, shapes):
        if "..." in sub:
            ell_nd = max(ell_nd, len(shp) - (len(sub) - 3))
    ell = free[:ell_nd]
    parsed, sizes = [], {}
    for k, (sub, shp) in enumerate(zip(ins, shapes)):
        if "..." in sub:
            nd = len(shp) - (len(sub) - 3)
            if nd < 0:
                raise ValueError(f"einsum: operand {k} of shape {shp} has too few dimensions for {sub!r}")
            letters = list(sub.replace("...", "".join(ell[ell_nd - nd:]) if nd else ""))
        else:
            if "." in sub:
                raise ValueError(f"einsum: malformed subscripts {subscripts!r}")
            letters = list(sub)
        if len(letters) != len(shp):
            raise ValueError(f"einsum: subscripts {sub!r} do not match operand {k} of shape {shp}")
        if len(set(letters)) != len(letters):
            raise ValueError(f"einsum: repeated index within one operand ({sub!r}: a trace or diagonal) is not "
                             "supported")
        for c, n in zip(letters, shp):
            if sizes.setdefault(c, n) != n:
                what = "a '...' dimension" if c in ell else f"index {c!r}"
                raise ValueError(f"einsum: {what} has size {sizes[c]} and {n} in {subscripts!r} (operand shapes "
                                 f"{shapes}; size-1 broadcasting between operands is not supported)")
        parsed.append(letters)
    if arrow:
        out = list(rhs.replace("...", "".join(ell)))
        for c in out:
            if c not in sizes:
                raise ValueError(f"einsum: output index {c!r} appears in no operand of {subscripts!r}")
        if len(set(out)) != len(out):
            raise ValueError(f"einsum: repeated output index in {subscripts!r}")
    else:
        counts = {}
        for letters in parsed:
            for c in letters:
                counts[c] = counts.get(c, 0) + 1
        out = list(ell) + sorted(c for c, n in counts.items() if n == 1 and c not in ell)
    return parsed, out, sizes


def einsum(subscripts, *operands):
    """Einstein summation over the operands (numpy's subscripts, '...' included)."""
    if not operands:
        raise ValueError("einsum: needs at least one operand")
    xp = same_device(*operands)
    ts = [as_tensor(o) for o in operands]
    if xp is not np:
        ts = [t if not isinstance(t.value, np.ndarray) else as_tensor(xp.asarray(t.value)) for t in ts]
    vals = [t.value for t in ts]
    parsed, out, sizes = _parse(subscripts, [v.shape for v in vals])
    spec = ",".join("".join(p) for p in parsed) + "->" + "".join(out)
    kw = {"optimize": True} if xp is np and len(vals) > 2 else {}
    y = wrap(xp, xp.einsum(spec, *vals, **kw))
    if any(t._rg for t in ts):
        def bw(g, needs):
            res = []
            for i, need in enumerate(needs):
                if not need:
                    res.append(None)
                    continue
                others = [j for j in range(len(vals)) if j != i]
                have = set(out).union(*(set(parsed[j]) for j in others))
                keep = [c for c in parsed[i] if c in have]
                gspec = ",".join(["".join(out)] + ["".join(parsed[j]) for j in others]) + "->" + "".join(keep)
                d = xp.einsum(gspec, g, *[vals[j] for j in others],
                              **({"optimize": True} if xp is np and len(others) > 1 else {}))
                if len(keep) != len(parsed[i]):   # indices only this operand sums: broadcast back
                    d = d.reshape(tuple(sizes[c] if c in have else 1 for c in parsed[i]))
                    full = xp.empty(vals[i].shape, d.dtype)
                    full[...] = d
                    d = full
                res.append(grad_like(xp.ascontiguousarray(d), vals[i]))
            return res
        record(tuple(ts), (y,), bw)
    return y
