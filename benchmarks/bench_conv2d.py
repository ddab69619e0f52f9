"""Conv2D benchmarks: kilnet._cpu against PyTorch (CPU) at 1 and 2 threads, forward and
forward+backward, for the canonical model's first layer (also with its relu), a middle layer and
a strided layer.

    pytest benchmarks/bench_conv2d.py --benchmark-only     # pytest-benchmark
    python benchmarks/bench_conv2d.py [--reps 40] [--rounds 3] [--threads 1 2]   # a table
    KILNET_CONV_PATH=gemm python benchmarks/bench_conv2d.py   # kilnet's general im2col+gemm path

Both libraries get the same data; torch runs its native NCHW layout (the usual way it is called)
and, like kilnet, accumulates its weight gradients across calls. For the first layer neither
computes dx (x does not require grad / dx=None), as in training. With an activation, kilnet
runs it fused into the conv kernels (act=, and y= in the backward pass) and torch runs conv2d
then relu; the "unfused" column is kilnet's conv, then activation_forward in place, and
activation_backward then the conv backward, as before the fusion. Timings are medians of single
calls; the machine may be shared, so the table also prints the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pytest

from kilnet import _cpu, fair_timing
from machine_info import machine, peak_line, peaks   # benchmarks/ is on sys.path

try:
    import torch
except ImportError:  # the kilnet rows still run
    torch = None

# name: (N, H, W, C, K, R, S, stride, padding (top, left), needs dx, activation)
CASES = {
    "first 32x28x28x1->32 3x3 valid": (32, 28, 28, 1, 32, 3, 3, 1, (0, 0), False, "linear"),
    "first 32x28x28x1->32 3x3 valid + relu": (32, 28, 28, 1, 32, 3, 3, 1, (0, 0), False, "relu"),
    "mid 64x14x14x32->64 3x3 same": (64, 14, 14, 32, 64, 3, 3, 1, (1, 1), True, "linear"),
    "strided 32x28x28x32->64 3x3 s2 p1": (32, 28, 28, 32, 64, 3, 3, 2, (1, 1), True, "linear"),
}


class Case:
    """Arrays for one case, shared by kilnet and torch, and the two ops for each library."""

    def __init__(self, name):
        N, H, W, C, K, R, S, stride, pad, self.needs_dx, self.act = CASES[name]
        self.name = name
        P = (H + 2 * pad[0] - R) // stride + 1
        Q = (W + 2 * pad[1] - S) // stride + 1
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((N, H, W, C), dtype=np.float32)
        self.w = (rng.standard_normal((R, S, C, K), dtype=np.float32) / np.sqrt(R * S * C)).astype(np.float32)
        self.b = np.zeros(K, np.float32)
        self.y = np.empty((N, P, Q, K), np.float32)
        self.dy = rng.standard_normal(self.y.shape, dtype=np.float32)
        self.dz = np.empty_like(self.dy)   # the unfused variant's activation gradient
        self.dx = np.empty_like(self.x) if self.needs_dx else None
        self.dw, self.db = np.zeros_like(self.w), np.zeros_like(self.b)
        self.kw = dict(stride=(stride, stride), padding=pad)
        self.flops_fwd = 2.0 * N * P * Q * K * R * S * C
        # backward: dw costs what the forward does, and so does dx when it is computed
        self.flops_fwdbwd = self.flops_fwd * (3 if self.needs_dx else 2)
        if torch is not None:
            self.tx = torch.from_numpy(self.x).permute(0, 3, 1, 2).contiguous().requires_grad_(self.needs_dx)
            self.tw = torch.from_numpy(self.w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
            self.tb = torch.zeros(K, requires_grad=True)
            self.tdy = torch.from_numpy(self.dy).permute(0, 3, 1, 2).contiguous()
            self.tstride, self.tpad = stride, pad

    def kilnet_fwd(self):
        _cpu.conv2d_forward(self.x, self.w, self.b, self.y, **self.kw, act=self.act)

    def kilnet_fwdbwd(self):
        _cpu.conv2d_forward(self.x, self.w, self.b, self.y, **self.kw, act=self.act)
        _cpu.conv2d_backward(self.dy, self.x, self.w, self.dx, self.dw, self.db, **self.kw, act=self.act, y=self.y)

    def unfused_fwd(self):
        _cpu.conv2d_forward(self.x, self.w, self.b, self.y, **self.kw)
        _cpu.activation_forward(self.act, self.y, self.y)

    def unfused_fwdbwd(self):
        self.unfused_fwd()
        _cpu.activation_backward(self.act, self.y, self.dy, self.dz)
        _cpu.conv2d_backward(self.dz, self.x, self.w, self.dx, self.dw, self.db, **self.kw)

    def _torch_out(self):
        out = torch.nn.functional.conv2d(self.tx, self.tw, self.tb, stride=self.tstride, padding=self.tpad)
        return torch.relu(out) if self.act == "relu" else out

    def torch_fwd(self):
        with torch.no_grad():
            self._torch_out()

    def torch_fwdbwd(self):
        self._torch_out().backward(self.tdy)


def set_threads(n):
    _cpu.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------- pytest-benchmark
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("op", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("lib", ["kilnet", "unfused", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d(benchmark, case, lib, op, threads):
    if lib == "torch" and torch is None:
        pytest.skip("torch is not installed")
    c = Case(case)
    if lib == "unfused" and c.act == "linear":
        pytest.skip("no activation to fuse")
    old = _cpu.get_num_threads()
    set_threads(threads)
    try:
        fn = getattr(c, f"{lib}_{op}")
        benchmark.extra_info["gflop"] = (c.flops_fwd if op == "fwd" else c.flops_fwdbwd) / 1e9
        benchmark.pedantic(fn, rounds=30, iterations=1, warmup_rounds=3)
    finally:
        set_threads(old)


# ------------------------------------------------------------------------- table
def median_ms(fn, reps):
    fn()
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def libraries():
    tv = torch.__version__ if torch is not None else "not installed"
    path = "im2col+gemm" if os.environ.get("KILNET_CONV_PATH") == "gemm" else "default dispatch"
    return f"kilnet {_cpu.build_info()} simd={_cpu.simd_level()} conv path={path}; torch {tv}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=40, help="timed calls per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is over all calls")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)

    print(f"# {machine()}")
    print(f"# {libraries()}")
    peak = peaks(args.threads)
    print(f"# {peak_line(peak)}; % peak = kilnet's GFLOP/s / that")
    print("| case | threads | op | kilnet ms | GFLOP/s | % peak | torch ms | torch / kilnet | unfused ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    old = _cpu.get_num_threads()
    for name in CASES:
        c = Case(name)
        for nt in args.threads:
            set_threads(nt)
            for op in ("fwd", "fwdbwd"):
                flops = c.flops_fwd if op == "fwd" else c.flops_fwdbwd
                ks, ts, us = [], [], []
                turns = [(ks, getattr(c, f"kilnet_{op}"))]
                if torch is not None:
                    turns.append((ts, getattr(c, f"torch_{op}")))
                if c.act != "linear":
                    turns.append((us, getattr(c, f"unfused_{op}")))
                for r in range(args.rounds):   # interleave so all see the same machine load,
                    for out, fn in fair_timing.rotate(turns, r):   # in a rotating order (issue 23),
                        fair_timing.wait_idle()                    # each after the others' pools idled
                        out.append(median_ms(fn, args.reps))
                k = statistics.median(ks)
                gf = flops / k / 1e6
                t = statistics.median(ts) if ts else float("nan")
                u = f"{statistics.median(us):.3f}" if us else "-"
                print(f"| {name} | {nt} | {'fwd' if op == 'fwd' else 'fwd+bwd'} | {k:.3f} | {gf:.1f} | "
                      f"{100 * gf / peak[nt]:.0f}% | {t:.3f} | {t / k:.2f}x | {u} |"
                      + (" ! stall" if any(len(v) > 1 and fair_timing.stalled(v) for v in (ks, ts, us)) else ""),
                      flush=True)
    set_threads(old)
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
