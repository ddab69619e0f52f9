"""Host cost of one kilnet._cuda call: how long Python waits in a call that launches a tiny
kernel (argument checks, stream lookup, launch), against PyTorch's eager call for the same
operation. At batch 32 the canonical model's GPU step is bound by exactly this (about 20 calls
per step, each kernel a few µs). Timed on the host with perf_counter over many calls, the device
synchronized before and after; the kernels are tiny, so the GPU keeps up and the figure is the
host's. Run as a script for the table; `rows()` for gpu_check.sh."""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_timing import HEADER, fmt_row  # noqa: E402
from machine_info import machine  # noqa: E402  (the host line of the header)

CALLS = 2000


def host_ms(fn, sync, calls=CALLS, repeat=5):
    """Median over `repeat` runs of the host milliseconds per call."""
    for _ in range(50):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e3)
        sync()
    return statistics.median(times)


def rows():
    import cupy as cp
    import numpy as np
    from kilnet import _cuda as k

    sync = cp.cuda.get_current_stream().synchronize
    try:
        import torch
        tsync = torch.cuda.synchronize
    except ImportError:
        torch = None

    def row(name, kfn, ref_name, tfn, arrays):
        km = host_ms(kfn, sync)
        tm = host_ms(tfn, tsync) if (torch is not None and tfn is not None) else None
        return (name, f"{km:.4f}", ref_name if tm is not None else "-",
                f"{tm:.4f}" if tm is not None else "-", f"{tm / km:.2f}" if tm is not None else "-",
                f"{km * 1e3 / arrays:.1f} us per array argument")

    x = cp.ones(1024, cp.float32)
    y = cp.empty_like(x)
    tx = torch.ones(1024, device="cuda") if torch is not None else None
    ty = torch.empty_like(tx) if torch is not None else None
    yield row("host per call: activation_forward relu, 1024 floats", lambda: k.activation_forward("relu", x, y),
              "torch.clamp(min=0, out=)", (lambda: torch.clamp(tx, min=0, out=ty)) if torch else None, 2)

    a, b, c = cp.ones((32, 64), cp.float32), cp.ones((64, 10), cp.float32), cp.empty((32, 10), cp.float32)
    ta, tb, tc = ((torch.ones(32, 64, device="cuda"), torch.ones(64, 10, device="cuda"),
                   torch.empty(32, 10, device="cuda")) if torch else (None, None, None))
    yield row("host per call: gemm 32x64 @ 64x10", lambda: k.gemm(a, b, c),
              "torch.mm(out=)", (lambda: torch.mm(ta, tb, out=tc)) if torch else None, 3)

    xi = cp.ones((32, 28, 28, 1), cp.float32)
    w = cp.ones((3, 3, 1, 32), cp.float32) * np.float32(0.1)
    yo = cp.empty((32, 26, 26, 32), cp.float32)
    dw, db = cp.zeros_like(w), cp.zeros(32, cp.float32)
    k.conv2d_forward(xi, w, db, yo, act="relu")
    yield row("host per call: conv2d_backward canonical first layer (6 arrays)",
              lambda: k.conv2d_backward(yo, xi, w, None, dw, db, act="relu", y=yo), "-", None, 6)

    # What the interface path pays per array (every array took it before the cupy.ndarray path).
    yield row("host: reading cupy_array.__cuda_array_interface__ once", lambda: x.__cuda_array_interface__,
              "-", None, 1)


def main():
    print(f"# host: {machine()}")
    print(fmt_row(HEADER))
    print(fmt_row(["---"] * len(HEADER)))
    for r in rows():
        print(fmt_row(r), flush=True)


if __name__ == "__main__":
    main()
