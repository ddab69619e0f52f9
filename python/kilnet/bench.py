"""`kilnet bench`: time every CPU kernel family and the canonical training step against the
machine's measured FMA peak and, when installed, numpy and PyTorch on the same data.

For each thread count: the FMA peak is measured with kilnet._cpu.fma_peak_gflops (independent FMA
chains, kilnet/peak.h) at the SIMD level the kernels run (simd_level(); KILNET_SIMD lowers it),
never taken from a clock-rate constant, then each case is timed as the median of several calls after a warm-up
(time.perf_counter). Compute-bound cases report GFLOP/s and % of that peak; memory-bound ones
(activation, loss, Adam, pooling, batch norm) report GB/s of the bytes they must move. A peer's
ratio is its time / kilnet's time (> 1: kilnet faster), paired by round. Shapes and FLOP formulas follow
benchmarks/bench_gemm.py, bench_conv2d.py, bench_rnn.py and bench_epoch.py.

Other libraries' thread pools must not time each other (issue 23): each row is the median over
several rounds, the libraries take turns case by case in an order that rotates every round, and
each library's turn starts only once the others' pools are idle (kilnet.fair_timing.wait_idle),
or, with per_process=True (`--per-process`), in a process of its own taking the same turns. The
arrays a case times lie the same way in every process (_place). A time whose round
medians spread by more than fair_timing.STALL_SPREAD is printed with "!" (a stall or a busy
machine). `python -m kilnet.bench --worker LIB` is that per-process worker.

Self-contained: numpy is the only import at load time of the kernels' data; torch is imported
lazily (_import_peer) and a missing peer prints "-". Performance is measured here, never asserted.
"""
from __future__ import annotations

import importlib
import json
import mmap
import os
import platform
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from kilnet import fair_timing
from kilnet.backend import cpu as _cpu

LIBS = ("kilnet", "numpy", "torch")
FAMILIES = ("gemm", "conv2d", "activation", "softmax_ce", "adam", "pooling", "batchnorm", "rnn",
            "train_step")


def _import_peer(name):
    """The peer library `name` (numpy, torch), or None when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except Exception:   # ImportError, or a broken install: the column shows "-"
        return None


class Case:
    """One timed row: kilnet's call and its peers' on the same data.

    work: flops (unit "GFLOP/s") or bytes moved (unit "GB/s") per call."""

    def __init__(self, family, shape, kilnet, work, unit="GFLOP/s", numpy=None, torch=None, note=""):
        self.family, self.shape, self.unit, self.work, self.note = family, shape, unit, work, note
        self.fns = {"kilnet": kilnet, "numpy": numpy, "torch": torch}


# ---- timing --------------------------------------------------------------------------------------

def median_seconds(fn, quick):
    """Median seconds per call of fn after warm-up (fair_timing.median_seconds): at least
    `min_reps` calls and about `budget` s."""
    # Short calls get more of them within the budget: a median of 20 calls of 30 us covers 0.6 ms,
    # which one hiccup of a shared machine can own.
    warm, min_reps, budget, max_reps = (1, 5, 0.02, 100) if quick else (2, 5, 0.08, 300)
    return fair_timing.median_seconds(fn, warm, min_reps, budget, max_reps)


def set_threads(n, torch):
    """kilnet, numpy's BLAS (threadpoolctl when installed) and torch on n threads. Returns a
    function that puts back the thread counts found (the run leaves the process as it was)."""
    old_k, old_t = _cpu.get_num_threads(), (torch.get_num_threads() if torch is not None else None)
    limits = None
    try:   # first: threadpoolctl's restore also puts back the OpenMP count it found
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(n, user_api="blas")
    except Exception:
        pass
    _cpu.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)

    def restore():
        if limits is not None:
            limits.restore_original_limits()
        _cpu.set_num_threads(old_k)
        if torch is not None:
            torch.set_num_threads(old_t)
    return restore


# ---- machine facts -------------------------------------------------------------------------------

def measured_peak(threads, level, quick):
    """The FMA peak of `threads` threads at SIMD level `level`: the best of several short probes.
    It is probed before and after the cases and the larger kept: on a shared machine a probe
    that lost its core for a while would understate it (and inflate "% peak"); many short
    probes (like the cases' many short calls) find the moments the core was ours."""
    return max(_cpu.fma_peak_gflops(threads, 0.02, level) for _ in range(4 if quick else 10))


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo(field):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model():
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def simd_flags():
    """The flags of SIMD_FLAGS that /proc/cpuinfo lists, joined by spaces ('unknown' without it)."""
    flags = _cpuinfo("flags")
    if flags is None:
        return "unknown"
    have = set(flags.split())
    return " ".join(f for f in SIMD_FLAGS if f in have) or "none"


def numpy_blas():
    """Which BLAS numpy runs and its kernel (threadpoolctl), or '' when unknown."""
    try:
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            if info.get("user_api") == "blas":
                return f"{info.get('internal_api')} {info.get('version') or ''} {info.get('architecture') or ''}".strip()
    except Exception:
        pass
    return ""


# ---- the cases -----------------------------------------------------------------------------------

def _rng():
    return np.random.default_rng(0)


_HUGE = 1 << 21                 # the x86-64 transparent huge page
_STAGGER = 263 * 64             # bytes between successive arrays' offsets in their huge pages
_PLACE_MIN = 1 << 18            # smaller arrays are ordinary copies
_placed = [0]                   # arrays placed so far in this process


def _place(a):
    """A copy of array `a` in an anonymous mapping of its own, starting at a fixed offset from a
    2 MiB boundary, huge pages requested (numpy asks for them too, for arrays >= 4 MiB).

    Why (issue 23): where numpy's allocator puts a case's arrays depends on everything allocated
    before it in the process, and the same kernel on the same data ran 0.8 ms or 2.0 ms
    (softmax_ce 1024x1000, 1 thread) depending on that placement -- so one process's ratio
    disagreed with another's. Placed arrays sit the same way in every process (the cases are
    built in the same order), with successive arrays 263 cache lines apart mod 2 MiB so that a
    kernel's input and output streams never share cache sets or 4K-aliasing offsets."""
    a = np.asarray(a)
    if a.nbytes < _PLACE_MIN:            # a few pages: caches hold it whichever way it lies
        return np.array(a, copy=True)
    k = _placed[0]
    _placed[0] += 1
    off = 64 + (k * _STAGGER) % (_HUGE - 4096)
    length = off + max(a.nbytes, 1) + _HUGE
    try:
        mm = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):        # no anonymous mappings here: an ordinary copy
        return np.array(a, copy=True)
    buf = np.frombuffer(mm, np.uint8)    # keeps the mapping alive as long as the array
    base = (-buf.ctypes.data) % _HUGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE, base, length - base)
        except OSError:
            pass
    out = buf[base + off: base + off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _empty(shape, dtype=np.float32):
    return _place(np.zeros(shape, dtype))


def gemm_cases(quick, torch):
    sq = 256 if quick else 512
    shapes = [(f"square {sq}", sq, sq, sq, False, False),
              ("dense fwd 32x21632.21632x10", 32, 10, 21632, False, False),
              ("dense dW 21632x32^T.32x10", 21632, 10, 32, True, False),
              ("dense dX 32x10.(21632x10)^T", 32, 21632, 10, False, True)]
    if not quick:
        shapes.insert(1, ("square 1024", 1024, 1024, 1024, False, False))
    out = []
    for name, M, N, K, ta, tb in shapes:
        rng = _rng()
        a = _place(rng.uniform(-1, 1, (K, M) if ta else (M, K)).astype(np.float32))
        b = _place(rng.uniform(-1, 1, (N, K) if tb else (K, N)).astype(np.float32))
        c = _empty((M, N), np.float32)
        oa, ob = (a.T if ta else a), (b.T if tb else b)
        tfn = None
        if torch is not None:
            ta_, tb_, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
            toa, tob = (ta_.T if ta else ta_), (tb_.T if tb else tb_)
            tfn = lambda toa=toa, tob=tob, tc=tc: torch.mm(toa, tob, out=tc)
        out.append(Case("gemm", name, lambda a=a, b=b, c=c, ta=ta, tb=tb: _cpu.gemm(a, b, c, ta, tb),
                        2.0 * M * N * K, numpy=lambda oa=oa, ob=ob, c=c: np.matmul(oa, ob, out=c), torch=tfn))
    return out


def conv2d_cases(quick, torch):
    """Forward + backward. The canonical first layer (C = 1) needs no dx: fwd + dW = 2x forward
    flops; the inner layer computes dx too: 3x (bench_conv2d.py)."""
    n2 = 16 if quick else 64
    specs = [("N32 28x28x1->32 3x3 relu", 32, 28, 28, 1, 32, 0, "relu", False),
             (f"N{n2} 14x14x32->64 3x3 same", n2, 14, 14, 32, 64, 1, "linear", True)]
    out = []
    for name, N, H, W, C, K, pad, act, need_dx in specs:
        rng = _rng()
        P, Q = H + 2 * pad - 2, W + 2 * pad - 2
        x = _place(rng.uniform(-1, 1, (N, H, W, C)).astype(np.float32))
        w = _place(rng.uniform(-0.3, 0.3, (3, 3, C, K)).astype(np.float32))
        b = _place(rng.uniform(-0.1, 0.1, (K,)).astype(np.float32))
        y = _empty((N, P, Q, K), np.float32)
        dy = _place(rng.uniform(-1, 1, y.shape).astype(np.float32))
        dx = _place(np.empty_like(x)) if need_dx else None
        dw, db = _place(np.empty_like(w)), _place(np.empty_like(b))

        def k(x=x, w=w, b=b, y=y, dy=dy, dx=dx, dw=dw, db=db, pad=pad, act=act):
            _cpu.conv2d_forward(x, w, b, y, (1, 1), (pad, pad), (1, 1), act)
            dw.fill(0.0)
            db.fill(0.0)
            _cpu.conv2d_backward(dy, x, w, dx, dw, db, (1, 1), (pad, pad), (1, 1), act, y)
        tfn = None
        if torch is not None:
            F = torch.nn.functional
            tx = torch.from_numpy(_place(x.transpose(0, 3, 1, 2))).requires_grad_(need_dx)
            tw = torch.from_numpy(_place(w.transpose(3, 2, 0, 1))).requires_grad_(True)
            tb = torch.from_numpy(_place(b)).requires_grad_(True)
            tdy = torch.from_numpy(_place(dy.transpose(0, 3, 1, 2)))

            def tfn(tx=tx, tw=tw, tb=tb, tdy=tdy, pad=pad, act=act):
                tw.grad = tb.grad = tx.grad = None
                o = F.conv2d(tx, tw, tb, padding=pad)
                if act == "relu":
                    o = torch.relu(o)
                o.backward(tdy)
        flops = 2.0 * N * P * Q * K * 9 * C * (3 if need_dx else 2)
        out.append(Case("conv2d", name + " f+b", k, flops, torch=tfn))
    return out


def activation_cases(quick, torch):
    """ReLU forward (read x, write y) + backward (read y, dy, write dx): 20 bytes per element."""
    n = 1 << 20
    rng = _rng()
    x = _place(rng.uniform(-1, 1, n).astype(np.float32))
    dy = _place(rng.uniform(-1, 1, n).astype(np.float32))
    y, dx, mask = _place(np.empty_like(x)), _place(np.empty_like(x)), _empty(n, bool)

    def k():
        _cpu.activation_forward("relu", x, y)
        _cpu.activation_backward("relu", y, dy, dx)

    def npf():
        np.maximum(x, 0.0, out=y)
        np.greater(y, 0.0, out=mask)
        np.multiply(dy, mask, out=dx)
    tfn = None
    if torch is not None:
        tx = torch.from_numpy(_place(x)).requires_grad_(True)
        tdy = torch.from_numpy(dy)

        def tfn():
            tx.grad = None
            torch.relu(tx).backward(tdy)
    return [Case("activation", "relu f+b 1M", k, 20.0 * n, "GB/s", numpy=npf, torch=tfn)]


def softmax_ce_cases(quick, torch):
    """Fused softmax + cross-entropy, loss and gradient: read logits, write probs and grad
    (12 bytes per element)."""
    out = []
    for rows, cols in ((256, 10), (1024, 1000) if quick else (4096, 1000)):
        rng = _rng()
        x = _place(rng.normal(0, 2, (rows, cols)).astype(np.float32))
        lab = _place(rng.integers(0, cols, rows).astype(np.int64))
        probs, grad = _place(np.empty_like(x)), _place(np.empty_like(x))
        r = np.arange(rows)

        def k(x=x, lab=lab, probs=probs, grad=grad):
            _cpu.softmax_crossentropy(x, lab, None, probs, grad)

        def npf(x=x, lab=lab, grad=grad, r=r, rows=rows):
            e = np.exp(x - x.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            loss = -np.log(p[r, lab]).mean()
            np.copyto(grad, p)
            grad[r, lab] -= 1.0
            grad /= rows
            return loss
        tfn = None
        if torch is not None:
            tx = torch.from_numpy(_place(x)).requires_grad_(True)
            tl = torch.from_numpy(lab)

            def tfn(tx=tx, tl=tl):
                tx.grad = None
                torch.nn.functional.cross_entropy(tx, tl).backward()
        out.append(Case("softmax_ce", f"{rows}x{cols} f+b", k, 12.0 * rows * cols, "GB/s", numpy=npf, torch=tfn))
    return out


def adam_cases(quick, torch):
    """One Adam step over 1M parameters: read p, g, m, v and write p, m, v: 28 bytes per element."""
    n = 1 << 20
    rng = _rng()
    p = _place(rng.uniform(-1, 1, n).astype(np.float32))
    g = _place(rng.uniform(-1, 1, n).astype(np.float32) * 1e-2)
    m, v = _place(np.zeros_like(p)), _place(np.zeros_like(p))
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    step = [0]

    def k():
        step[0] += 1
        _cpu.adam_update(p, g, m, v, lr, b1, b2, eps, step[0])
    pn, mn, vn, tmp = _place(p), _place(np.zeros_like(p)), _place(np.zeros_like(p)), _place(np.empty_like(p))
    nstep = [0]

    def npf():
        nstep[0] += 1
        t = nstep[0]
        np.multiply(mn, b1, out=mn)
        np.multiply(g, 1 - b1, out=tmp)
        np.add(mn, tmp, out=mn)
        np.multiply(vn, b2, out=vn)
        np.multiply(g, g, out=tmp)
        np.multiply(tmp, 1 - b2, out=tmp)
        np.add(vn, tmp, out=vn)
        a = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        np.sqrt(vn, out=tmp)
        np.add(tmp, eps, out=tmp)
        np.divide(mn, tmp, out=tmp)
        np.multiply(tmp, a, out=tmp)
        np.subtract(pn, tmp, out=pn)
    tfn, note = None, ""
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(_place(p)))
        tp.grad = torch.from_numpy(_place(g))
        opt = None
        for kw in ({"fused": True}, {"foreach": True}, {}):
            try:
                opt = torch.optim.Adam([tp], lr=lr, betas=(b1, b2), eps=eps, **kw)
                opt.step()
                note = "torch " + (next(iter(kw)) if kw else "default")
                break
            except Exception:
                opt = None
        if opt is not None:
            tfn = opt.step
    return [Case("adam", "1M params", k, 28.0 * n, "GB/s", numpy=npf, torch=tfn, note=note)]


def pooling_cases(quick, torch):
    """Max pool 2x2 / 2 forward (read x, write y = x/4) + backward (read x, dy, write dx):
    3.5 x 4 bytes per input element."""
    N, H, W, C = (16 if quick else 64), 28, 28, 32
    rng = _rng()
    x = _place(rng.uniform(-1, 1, (N, H, W, C)).astype(np.float32))
    y = _empty((N, H // 2, W // 2, C), np.float32)
    dy = _place(rng.uniform(-1, 1, y.shape).astype(np.float32))
    dx = _place(np.empty_like(x))

    def k():
        _cpu.maxpool2d_forward(x, y, (2, 2), (2, 2))
        _cpu.maxpool2d_backward(x, dy, dx, (2, 2), (2, 2))

    def npf():
        v = x.reshape(N, H // 2, 2, W // 2, 2, C)
        yy = v.max(axis=(2, 4))
        mask = v == yy[:, :, None, :, None, :]          # ties: every maximum gets dy (close enough)
        np.multiply(mask, dy[:, :, None, :, None, :], out=dx.reshape(v.shape))
    tfn = None
    if torch is not None:
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).detach().requires_grad_(True)   # channels_last
        tdy = torch.from_numpy(dy).permute(0, 3, 1, 2)

        def tfn():
            tx.grad = None
            torch.nn.functional.max_pool2d(tx, 2, 2).backward(tdy)
    return [Case("pooling", f"max 2x2 ({N},{H},{W},{C}) f+b", k, 14.0 * x.size, "GB/s", numpy=npf, torch=tfn)]


def batchnorm_cases(quick, torch):
    """Training-mode batch norm forward (read x, write y) + backward (read x, dy, write dx): 20
    bytes per element (the statistics passes over x are not counted)."""
    N, H, W, C = (16 if quick else 64), 28, 28, 32
    rng = _rng()
    x = _place(rng.normal(0, 1, (N, H, W, C)).astype(np.float32))
    dy = _place(rng.normal(0, 1, x.shape).astype(np.float32))
    y, dx = _place(np.empty_like(x)), _place(np.empty_like(x))
    gamma, beta = _place(np.ones(C, np.float32)), _place(np.zeros(C, np.float32))
    mm, mv, mean, invstd = (_place(np.zeros(C, np.float32)) for _ in range(4))
    dg, dbeta = _place(np.zeros(C, np.float32)), _place(np.zeros(C, np.float32))

    def k():
        _cpu.batchnorm_forward(x, gamma, beta, mm, mv, mean, invstd, y, 0.99, 1e-3, True)
        _cpu.batchnorm_backward(x, dy, gamma, mean, invstd, dx, dg, dbeta, True)
    x2, dy2 = x.reshape(-1, C), dy.reshape(-1, C)

    def npf():
        mu = x2.mean(axis=0)
        xc = x2 - mu
        inv = 1.0 / np.sqrt((xc * xc).mean(axis=0) + 1e-3)
        xh = xc * inv
        np.multiply(xh, gamma, out=y.reshape(-1, C))
        y.reshape(-1, C)[...] += beta
        db_ = dy2.sum(axis=0)
        dg_ = (dy2 * xh).sum(axis=0)
        M = x2.shape[0]
        dx.reshape(-1, C)[...] = (gamma * inv / M) * (M * dy2 - db_ - xh * dg_)
    tfn = None
    if torch is not None:
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).detach().requires_grad_(True)
        tdy = torch.from_numpy(dy).permute(0, 3, 1, 2)
        tg = torch.ones(C, requires_grad=True)
        tb = torch.zeros(C, requires_grad=True)
        rm, rv = torch.zeros(C), torch.ones(C)

        def tfn():
            tx.grad = tg.grad = tb.grad = None
            torch.nn.functional.batch_norm(tx, rm, rv, tg, tb, training=True, momentum=0.01,
                                           eps=1e-3).backward(tdy)
    return [Case("batchnorm", f"train ({N},{H},{W},{C}) f+b", k, 20.0 * x.size, "GB/s", numpy=npf, torch=tfn)]


def rnn_cases(quick, torch):
    """SimpleRNN and LSTM over a whole sequence, forward + backward through time without dx
    (bench_rnn.py): 2*B*T*G*H*(2I + 3H) flops."""
    B, T, I, H = (16 if quick else 64), 28, 28, 128
    out = []
    for layer, cell, G, tname in (("SimpleRNN", "simple_rnn", 1, "RNN"), ("LSTM", "lstm", 4, "LSTM")):
        rng = _rng()
        x = _place(rng.uniform(-1, 1, (B, T, I)).astype(np.float32))
        w = _place(rng.uniform(-0.1, 0.1, (I, G * H)).astype(np.float32))
        u = _place(rng.uniform(-0.1, 0.1, (H, G * H)).astype(np.float32))
        b = np.zeros(G * H, np.float32)
        y = _empty((B, T, H), np.float32)
        dy = _place(rng.uniform(-1, 1, y.shape).astype(np.float32))
        ws_n, scratch_n = _cpu.rnn_workspace_size(cell, B, T, I, H)
        ws, scratch = _empty(ws_n, np.float32), _empty(scratch_n, np.float32)
        dw, du, db = _place(np.zeros_like(w)), _place(np.zeros_like(u)), _place(np.zeros_like(b))

        def k(cell=cell, x=x, w=w, u=u, b=b, y=y, ws=ws, dy=dy, scratch=scratch, dw=dw, du=du, db=db):
            _cpu.rnn_forward(cell, x, w, u, b, y, ws, None, None, "tanh", "sigmoid", False)
            _cpu.rnn_backward(cell, dy, x, w, u, ws, scratch, None, dw, du, db, None, None,
                              "tanh", "sigmoid", False)
        tfn = None
        if torch is not None:
            mod = getattr(torch.nn, tname)(I, H, batch_first=True)
            tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)

            def tfn(mod=mod, tx=tx, tdy=tdy):
                mod.zero_grad(set_to_none=True)
                o, _ = mod(tx)
                o.backward(tdy)
        out.append(Case("rnn", f"{layer} B{B} T{T} I{I} H{H} f+b", k, 2.0 * B * T * G * H * (2 * I + 3 * H),
                        torch=tfn))
    return out


def train_step_cases(quick, torch):
    """One training step of the canonical model at batch 32 (kilnet._canonical.canonical_model,
    the one kilnet.cli trains): Conv2D(32, 3x3, relu) -> Flatten -> Dense(10, softmax), Adam. Flops: conv fwd + dW and dense fwd + dW + dX,
    about 66 MFLOP per batch of 32 (issue 3)."""
    from kilnet._canonical import canonical_model
    from kilnet.trainers import trainer
    from kilnet.utils import set_random_seed
    B = 32
    rng = _rng()
    x = rng.uniform(0, 1, (256, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.int64)
    set_random_seed(0)
    model = canonical_model()
    data = trainer._prepare_fit(model, x, y, 0.0, None)
    xb, yb = np.ascontiguousarray(data.inputs.arrays[0][:B]), data.ys[0][:B].copy()

    def k():
        trainer.default_train_step(model, (xb, [yb]))
    conv = 2.0 * B * 26 * 26 * 32 * 9
    dense = 2.0 * B * 21632 * 10
    flops = 2 * conv + 3 * dense
    tfn = None
    if torch is not None:
        nn = torch.nn
        torch.manual_seed(0)
        tm = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 26 * 26, 10))
        opt = torch.optim.Adam(tm.parameters(), lr=1e-3, eps=1e-7)
        lossf = nn.CrossEntropyLoss()
        tx = torch.from_numpy(xb.transpose(0, 3, 1, 2).copy())
        ty = torch.from_numpy(y[:B].copy())

        def tfn():
            opt.zero_grad()
            lossf(tm(tx), ty).backward()
            opt.step()
    return [Case("train_step", "canonical CNN batch 32", k, flops, torch=tfn, note="samples/s")]


CASES = {"gemm": gemm_cases, "conv2d": conv2d_cases, "activation": activation_cases,
         "softmax_ce": softmax_ce_cases, "adam": adam_cases, "pooling": pooling_cases,
         "batchnorm": batchnorm_cases, "rnn": rnn_cases, "train_step": train_step_cases}


# ---- the run -------------------------------------------------------------------------------------

def _fmt_ms(s):
    return "-" if s is None else f"{s * 1e3:.3f}" if s < 1e-2 else f"{s * 1e3:.2f}"


def _paired_ratio(peer, mine):
    """The median over rounds of peer's round median / kilnet's in the same round (None without
    the peer). Paired: a round where the machine was slower for both libraries cancels out,
    where the ratio of the two overall medians could pair one library's good round with the
    other's bad one."""
    if not peer or not mine:
        return None
    if len(peer) != len(mine):
        return statistics.median(peer) / statistics.median(mine)
    return statistics.median(p / m for p, m in zip(peer, mine))


def _fmt_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.2f}x"


def parse_threads(values):
    """--threads 1 2, --threads 1,2 or nothing (1 and all cores)."""
    out = []
    for v in values or []:
        for part in str(v).split(","):
            if part.strip():
                n = int(part)
                if n < 1:
                    raise ValueError(f"--threads: thread counts must be >= 1, got {n}")
                out.append(n)
    if not out:
        out = [1, os.cpu_count() or 1]
    return list(dict.fromkeys(out))


def parse_only(value):
    if not value:
        return list(FAMILIES)
    fams = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        raise ValueError(f"--only: unknown famil{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)}; "
                         f"choose from {', '.join(FAMILIES)}")
    return fams


def _rounds(rounds, quick):
    n = (5 if quick else 7) if rounds is None else int(rounds)
    if n < 1:
        raise ValueError(f"--rounds must be >= 1, got {n}")
    return n


def run(threads=None, quick=False, only=None, out=print, per_process=False, rounds=None):
    """Run the benchmark and print the tables; returns the rows as dicts.

    Each row's time is the median over `rounds` rounds of each round's median; the libraries take
    turns case by case in an order that rotates from round to round. In one process (default)
    each library's turn starts once the other libraries' pools are idle (fair_timing.wait_idle);
    per_process=True times each library in a process of its own instead (the same turns).

    Arrays the cases time are placed the same way in every process (_place)."""
    threads = parse_threads(threads)
    fams = parse_only(only)
    rounds = _rounds(rounds, quick)
    np_ = _import_peer("numpy")
    torch = _import_peer("torch")
    blas = numpy_blas()
    level, best = _cpu.simd_level(), _cpu.machine_simd_level()
    mode = ("a process per library, libraries alternating case by case" if per_process
            else "one process, libraries alternating case by case, pools idle before each")
    out(f"kilnet bench: {cpu_model()}, {os.cpu_count()} logical cores; CPU flags {simd_flags()}; "
        f"kilnet SIMD {level}" + ("" if level == best else f" (machine best {best}, lowered by KILNET_SIMD)") + "; "
        f"numpy {np_.__version__ if np_ else '-'}{' (' + blas + ')' if blas else ''}; "
        f"torch {torch.__version__ if torch else '-'}" + ("; quick" if quick else "")
        + (f"; load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""))
    out(f"timing: {rounds} rounds, libraries in rotating order, {mode}")
    if any(v in os.environ for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
        out("note: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set: numpy's column is not OpenBLAS's own kernel")
    libs = [lib for lib, mod in (("kilnet", True), ("numpy", np_), ("torch", torch)) if mod is not None]
    rows = []
    for n in threads:
        if per_process:
            timed, peak, idle = _time_processes(n, fams, quick, rounds, libs, torch)
        else:
            restore = set_threads(n, torch)
            try:
                timed, peak, idle = _time_in_process(n, fams, quick, rounds, libs, torch)
            finally:
                restore()
        _table(n, timed, peak, idle, rows, out)
    return rows


def _build_cases(fams, quick, torch):
    return [case for fam in fams for case in CASES[fam](quick, torch)]


def _take_turns(n_cases, libs, can, rounds, time_one):
    """{(case index, lib): [one time per round]}: in each round the libraries take turns case by
    case, in an order that rotates every round. A case that the stall detector flags after the
    `rounds` rounds gets up to `rounds` more (all its libraries, still in turns): the median of
    more rounds is what "rerun before reading it" would give, and costs only the noisy rows."""
    samples = {}

    def one_round(r, cases):
        for i in cases:
            for lib in fair_timing.rotate(libs, r + i):
                if can(i, lib):
                    samples.setdefault((i, lib), []).append(time_one(i, lib))

    for r in range(rounds):
        one_round(r, range(n_cases))
    for r in range(rounds, 2 * rounds):
        noisy = [i for i in range(n_cases) if any(fair_timing.stalled(samples[(i, lib)])
                                                  for lib in libs if len(samples.get((i, lib), ())) > 1)]
        if not noisy:
            break
        one_round(r, noisy)
    return samples


def _time_in_process(n, fams, quick, rounds, libs, torch):
    """All libraries in this process: ({(case index, lib): [round medians]}, peak, idle) where
    idle is False when some library started with another pool still running. The libraries
    take turns case by case (so that a change in the machine's load between them is short),
    in an order that rotates every round, each after the others' pools went idle."""
    level = _cpu.simd_level()
    cases = _build_cases(fams, quick, torch)
    peak = measured_peak(n, level, quick)
    state = {"idle": True, "last": None}

    def time_one(i, lib):
        if lib != state["last"] and fair_timing.wait_idle() is False:
            state["idle"] = False
        state["last"] = lib
        return median_seconds(cases[i].fns[lib], quick)

    samples = _take_turns(len(cases), libs, lambda i, lib: cases[i].fns.get(lib) is not None, rounds, time_one)
    peak = max(peak, measured_peak(n, level, quick))
    return (cases, samples), peak, state["idle"]


class _Worker:
    """One library's worker process (`python -m kilnet.bench --worker LIB`), kept for all the
    rounds of one thread count and asked for one case at a time (`time I`, `peak`, `quit` on its
    stdin; each answer a line "KB <json>" on its stdout)."""

    def __init__(self, lib, n, fams, quick):
        cmd = [sys.executable, "-m", "kilnet.bench", "--worker", lib, "--threads", str(n), "--only", ",".join(fams)]
        if quick:
            cmd.append("--quick")
        self.lib, self.n = lib, n
        self._err = tempfile.TemporaryFile(mode="w+")   # a file, so a chatty stderr cannot block it
        self._p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                   text=True, env=fair_timing.worker_env(lib, n))
        self.cases = set(self._answer()["cases"])

    def _answer(self):
        for line in self._p.stdout:
            if line.startswith("KB "):
                return json.loads(line[3:])
        self._p.wait()
        self._err.seek(0)
        raise RuntimeError(f"kilnet bench: the {self.lib} worker (threads {self.n}) stopped "
                           f"(exit {self._p.returncode}):\n{self._err.read()[-3000:]}")

    def ask(self, command):
        self._p.stdin.write(command + "\n")
        self._p.stdin.flush()
        return self._answer()

    def close(self):
        try:
            if self._p.poll() is None:
                self._p.stdin.write("quit\n")
                self._p.stdin.flush()
                self._p.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._p.kill()
            self._p.wait()
        self._err.close()


def _time_processes(n, fams, quick, rounds, libs, torch):
    """Each library in a process of its own, all started before the first case: the libraries
    take turns case by case in an order that rotates every round, as in one process, and each
    worker answers only once its own pools went idle. (Each library's cases and their memory sit
    in its own process; a worker that ran all its cases in one go, minutes apart from its peers,
    saw another load on the machine than they did.)"""
    workers = {}
    try:
        for lib in libs:
            workers[lib] = _Worker(lib, n, fams, quick)
        peak = workers["kilnet"].ask("peak")
        cases = _build_cases(fams, quick, torch)   # names, work and units only: nothing is called here
        samples = _take_turns(len(cases), libs, lambda i, lib: i in workers[lib].cases, rounds,
                              lambda i, lib: workers[lib].ask(f"time {i}"))
        peak = max(peak, workers["kilnet"].ask("peak"))
    finally:
        for w in workers.values():
            w.close()
    return (cases, samples), peak, True


def worker(lib, n, fams, quick, commands=None, reply=None):
    """One library's cases in this process, timed on request (see _Worker): first answers
    {"cases": [indexes it can run]}, then one answer per command -- `time I` (seconds per call of
    case I, after this process's pools went idle), `peak` (GFLOP/s, kilnet's worker only),
    `quit`."""
    commands = sys.stdin if commands is None else commands
    if reply is None:
        def reply(obj):
            sys.stdout.write("KB " + json.dumps(obj) + "\n")
            sys.stdout.flush()
    torch = _import_peer("torch") if lib == "torch" else None
    if lib == "torch" and torch is None:
        raise SystemExit("kilnet bench worker: torch is not installed")
    restore = set_threads(n, torch)
    try:
        cases = _build_cases(fams, quick, torch)
        can = [i for i, c in enumerate(cases) if c.fns.get(lib) is not None]
        reply({"cases": can})
        for line in commands:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "quit":
                break
            if cmd[0] == "time" and len(cmd) == 2 and cmd[1].isdigit() and int(cmd[1]) in can:
                t = median_seconds(cases[int(cmd[1])].fns[lib], quick)
                fair_timing.wait_idle()
                reply(t)
            elif cmd[0] == "peak" and lib == "kilnet":
                reply(measured_peak(n, _cpu.simd_level(), quick))
            else:
                raise SystemExit(f"kilnet bench worker ({lib}): bad command {line.strip()!r} "
                                 f"(time I with I in {can}, peak, quit)")
    finally:
        restore()


def _table(n, timed, peak, idle, rows, out):
    """Print one thread count's table; append its rows (dicts) to `rows`."""
    cases, samples = timed
    hdr = ("family", "shape", "kilnet ms", "rate", "unit", "% peak", "numpy ms", "np/kl", "torch ms", "torch/kl")
    level = _cpu.simd_level()
    out("")
    out(f"threads {n}: measured FMA peak {peak:.1f} GFLOP/s ({level}, {peak / n:.1f} per thread); "
        "ratios are peer time / kilnet time (> 1: kilnet faster), the median over rounds of each round's")
    table, flagged = [], False
    for i, case in enumerate(cases):
        t, flag = {}, {}
        for lib in LIBS:
            s = samples.get((i, lib))
            t[lib] = statistics.median(s) if s else None
            flag[lib] = bool(s) and fair_timing.stalled(s)
        flagged = flagged or any(flag.values())
        k = t["kilnet"]
        ratio = {lib: _paired_ratio(samples.get((i, lib)), samples.get((i, "kilnet"))) for lib in LIBS[1:]}
        rate = case.work / k * 1e-9
        pct = f"{100 * rate / peak:.0f}" if case.unit == "GFLOP/s" and peak > 0 else "-"
        rows.append({"threads": n, "family": case.family, "shape": case.shape, "kilnet_s": k, "rate": rate,
                     "unit": case.unit, "peak_gflops": peak, "numpy_s": t["numpy"], "torch_s": t["torch"],
                     "numpy_ratio": ratio["numpy"], "torch_ratio": ratio["torch"],
                     "spread": {lib: fair_timing.spread(samples[(i, lib)]) for lib in LIBS if samples.get((i, lib))},
                     "stalled": sorted(lib for lib in LIBS if flag[lib])})
        shape = case.shape
        if case.note == "samples/s":
            shape += f" ({32 / k:,.0f} samples/s" + (f", torch {32 / t['torch']:,.0f}" if t["torch"] else "") + ")"
        elif case.note:
            shape += f" ({case.note})"
        ms = lambda lib: _fmt_ms(t[lib]) + ("!" if flag[lib] else "")
        table.append((case.family, shape, ms("kilnet"), f"{rate:.1f}", case.unit, pct, ms("numpy"),
                      _fmt_ratio(ratio["numpy"]), ms("torch"), _fmt_ratio(ratio["torch"])))
    widths = [max(len(str(r[i])) for r in [hdr] + table) for i in range(len(hdr))]
    left = {0, 1, 4}
    fmt = lambda r: "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    out(fmt(hdr))
    out("  ".join("-" * w for w in widths))
    for r in table:
        out(fmt(r))
    if flagged:
        out(f"! stall: that time's round medians spread by more than {fair_timing.STALL_SPREAD}x (max/min); "
            "the machine was busy or a thread pool stalled it: rerun before reading it")
    if not idle:
        out("note: some library started while another pool's threads were still running after 1 s")
    return table


def _main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="python -m kilnet.bench", description="kilnet bench's worker process")
    ap.add_argument("--worker", choices=LIBS, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    worker(a.worker, a.threads, parse_only(a.only), a.quick)


if __name__ == "__main__":
    _main()
