"""GPU conv2d benchmark: kilnet._cuda (our implicit GEMM) against PyTorch's cuDNN, float32
(TF32 off on both sides; then a few TF32 rows with it on on both sides), forward, backward (dx, dw, db) and the two together, for the issue-4
target layers and the canonical model's first layer (with its relu, dx skipped as in training).

    python benchmarks/bench_gpu_conv2d.py

PyTorch runs channels_last tensors (NHWC in memory, as kilnet), the fairest layout for cuDNN;
its backward is aten.convolution_backward (no autograd overhead), after threshold_backward for
the relu layer. kilnet fuses the relu into the conv kernels. Rates count 2*N*P*Q*K*R*S*C flops
per pass (the forward, the data gradient when computed, the weight gradient).
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_timing import HEADER, cuda_time_ms, fmt_row, torch_cuda_time_ms  # noqa: E402
from machine_info import machine  # noqa: E402  (the host line of the header)

# name: (N, H, W, C, K, R, S, padding (top, left), needs dx, activation)
CASES = [
    ("conv 256x14x14x32->64 3x3 same", (256, 14, 14, 32, 64, 3, 3, (1, 1), True, "linear")),
    ("conv 256x32x32x64->128 3x3 same", (256, 32, 32, 64, 128, 3, 3, (1, 1), True, "linear")),
    ("first 32x28x28x1->32 3x3 valid relu", (32, 28, 28, 1, 32, 3, 3, (0, 0), False, "relu")),
    ("first 256x28x28x1->32 3x3 valid relu", (256, 28, 28, 1, 32, 3, 3, (0, 0), False, "relu")),
]


def _torch_case(N, H, W, C, K, R, S, pad, needs_dx, act, x_np, w_np, b_np, dy_np, tf32=False):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    cl = torch.channels_last
    x = torch.from_numpy(x_np).to(dev).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    w = torch.from_numpy(w_np).to(dev).permute(3, 2, 0, 1).contiguous(memory_format=cl)
    b = torch.from_numpy(b_np).to(dev)
    dy = torch.from_numpy(dy_np).to(dev).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    conv_bwd = torch.ops.aten.convolution_backward
    state = {}

    def fwd():
        y = torch.nn.functional.conv2d(x, w, b, padding=pad)
        if act == "relu":
            y = torch.relu_(y)
        state["y"] = y

    fwd()

    def bwd():
        dz = dy if act == "linear" else torch.ops.aten.threshold_backward(dy, state["y"], 0.0)
        conv_bwd(dz, x, w, [K], [1, 1], list(pad), [1, 1], False, [0, 0], 1, [needs_dx, True, True])

    def both():
        fwd()
        bwd()
    return fwd, bwd, both


def rows():
    yield from _rows(tf32=False)
    yield from _rows(tf32=True)


def _rows(tf32):
    import cupy as cp
    from kilnet import _cuda as k
    k.set_tf32(tf32)
    cases = CASES if not tf32 else CASES[:2]   # TF32 (both sides): the two target layers only
    for name, (N, H, W, C, K, R, S, pad, needs_dx, act) in cases:
        if tf32:
            name = "TF32 " + name
        P = H + 2 * pad[0] - R + 1 if pad[0] == 0 else H
        Q = W + 2 * pad[1] - S + 1 if pad[1] == 0 else W
        rng = np.random.default_rng(0)
        x_np = rng.standard_normal((N, H, W, C), dtype=np.float32)
        w_np = (rng.standard_normal((R, S, C, K), dtype=np.float32) / np.sqrt(R * S * C)).astype(np.float32)
        b_np = rng.standard_normal(K, dtype=np.float32)
        dy_np = rng.standard_normal((N, P, Q, K), dtype=np.float32)
        x, w, b, dy = (cp.asarray(a) for a in (x_np, w_np, b_np, dy_np))
        y = cp.empty((N, P, Q, K), cp.float32)
        dx = cp.empty_like(x) if needs_dx else None
        dw, db = cp.zeros_like(w), cp.zeros_like(b)
        kw = dict(stride=(1, 1), padding=pad, dilation=(1, 1), act=act)

        def kf():
            k.conv2d_forward(x, w, b, y, **kw)

        def kb():
            k.conv2d_backward(dy, x, w, dx, dw, db, **kw, y=y if act != "linear" else None)

        def kfb():
            kf()
            kb()
        kf()
        flop = 2.0 * N * P * Q * K * R * S * C
        passes = {"fwd": (kf, flop), "bwd": (kb, flop * (2 if needs_dx else 1)),
                  "fwd+bwd": (kfb, flop * (3 if needs_dx else 2))}
        try:
            tf, tb, tfb = _torch_case(N, H, W, C, K, R, S, pad, needs_dx, act, x_np, w_np, b_np, dy_np, tf32)
            tpass = {"fwd": tf, "bwd": tb, "fwd+bwd": tfb}
        except Exception as e:  # noqa: BLE001 - no torch / no CUDA torch: kilnet rows only
            print(f"# torch reference skipped: {type(e).__name__}: {e}", file=sys.stderr)
            tpass = None
        labels = passes if not tf32 else {"fwd+bwd": passes["fwd+bwd"]}
        for label, (fn, fl) in labels.items():
            ms = cuda_time_ms(fn, warmup=3, repeat=15)
            rate = fl / (ms * 1e-3) / 1e12
            if tpass is not None:
                tms = torch_cuda_time_ms(tpass[label], warmup=3, repeat=15)
                pct = 100.0 * tms / ms
                ref = "torch cuDNN " + ("TF32" if tf32 else "fp32") + " NHWC"
                yield (f"{name} {label}", f"{ms:.3f}", ref, f"{tms:.3f}",
                       f"{tms / ms:.2f}", f"{rate:.1f} TFLOP/s ({pct:.0f}% of cuDNN speed)")
            else:
                yield (f"{name} {label}", f"{ms:.3f}", "-", "-", "-", f"{rate:.1f} TFLOP/s")
    k.set_tf32(False)


if __name__ == "__main__":
    print(f"# host: {machine()}")
    print(fmt_row(HEADER))
    for r in rows():
        print(fmt_row(r), flush=True)
