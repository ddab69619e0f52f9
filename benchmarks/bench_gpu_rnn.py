"""GPU recurrent, pooling and batch-norm kernels: kilnet._cuda against PyTorch (cuDNN LSTM,
channels_last max pooling, cuDNN batch norm). Run as a script for the table; `rows()` for
gpu_check.sh. TF32 is off on both sides (float32 results)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_timing import HEADER, cuda_time_ms, fmt_row, torch_cuda_time_ms  # noqa: E402
from machine_info import machine  # noqa: E402  (the host line of the header)


def _torch():
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _uniform(cp, rng, shape, lo=-1.0, hi=1.0):
    return (lo + (hi - lo) * rng.random(shape, dtype=cp.float32)).astype(cp.float32)


def _lstm_rows(cp, k):
    B, T, I, H = 64, 50, 32, 128
    G = 4 * H
    rng = cp.random.default_rng(0)
    x = _uniform(cp, rng, (B, T, I), -1, 1)
    w = _uniform(cp, rng, (I, G), -0.1, 0.1)
    u = _uniform(cp, rng, (H, G), -0.1, 0.1)
    b = _uniform(cp, rng, G, -0.1, 0.1)
    dy = _uniform(cp, rng, (B, T, H), -1, 1)
    ws_n, sc_n = k.rnn_workspace_size("lstm", B, T, I, H)
    ws, sc = cp.empty(ws_n, cp.float32), cp.empty(sc_n, cp.float32)
    y = cp.empty((B, T, H), cp.float32)
    dx, dw, du, db = cp.empty_like(x), cp.zeros_like(w), cp.zeros_like(u), cp.zeros_like(b)

    def fwd():
        k.rnn_forward("lstm", x, w, u, b, y, ws)

    def fwd_bwd():
        k.rnn_forward("lstm", x, w, u, b, y, ws)
        k.rnn_backward("lstm", dy, x, w, u, ws, sc, dx, dw, du, db)

    flops_fwd = 2.0 * B * T * (I + H) * G
    flops = 3 * flops_fwd   # backward: dx/dh and dW/dU, two products per forward one
    ours_f = cuda_time_ms(fwd, warmup=3, repeat=10)
    ours = cuda_time_ms(fwd_bwd, warmup=3, repeat=10)
    name = f"LSTM B{B} T{T} I{I} H{H}"
    try:
        torch = _torch()
        lstm = torch.nn.LSTM(I, H, batch_first=True).cuda()
        xt = torch.as_tensor(x, device="cuda").requires_grad_(True)
        dyt = torch.as_tensor(dy, device="cuda")

        def t_fwd():
            with torch.no_grad():
                lstm(xt)

        def t_fwd_bwd():
            out, _ = lstm(xt)
            out.backward(dyt)

        ref_f = torch_cuda_time_ms(t_fwd, warmup=3, repeat=10)
        ref = torch_cuda_time_ms(t_fwd_bwd, warmup=3, repeat=10)
        yield (f"{name} fwd", f"{ours_f:.3f}", "torch nn.LSTM (cuDNN)", f"{ref_f:.3f}", f"{ref_f / ours_f:.2f}",
               f"{flops_fwd / (ours_f * 1e-3) / 1e12:.2f} TFLOP/s")
        yield (f"{name} fwd+bwd", f"{ours:.3f}", "torch nn.LSTM (cuDNN)", f"{ref:.3f}", f"{ref / ours:.2f}",
               f"{flops / (ours * 1e-3) / 1e12:.2f} TFLOP/s")
    except Exception as e:  # noqa: BLE001
        yield (f"{name} fwd", f"{ours_f:.3f}", f"torch failed: {type(e).__name__}", "-", "-",
               f"{flops_fwd / (ours_f * 1e-3) / 1e12:.2f} TFLOP/s")
        yield (f"{name} fwd+bwd", f"{ours:.3f}", f"torch failed: {type(e).__name__}", "-", "-",
               f"{flops / (ours * 1e-3) / 1e12:.2f} TFLOP/s")


def _pool_rows(cp, k):
    N, Hh, W, C = 256, 28, 28, 32
    rng = cp.random.default_rng(1)
    x = _uniform(cp, rng, (N, Hh, W, C), -1, 1)
    y = cp.empty((N, Hh // 2, W // 2, C), cp.float32)
    dy = _uniform(cp, rng, y.shape, -1, 1)
    dx = cp.empty_like(x)
    pool = (2, 2)
    ours_f = cuda_time_ms(lambda: k.maxpool2d_forward(x, y, pool, pool), repeat=10, inner=10)
    ours_b = cuda_time_ms(lambda: (k.maxpool2d_forward(x, y, pool, pool),
                                   k.maxpool2d_backward(x, dy, dx, pool, pool)), repeat=10, inner=10)
    bytes_f = (x.size + y.size) * 4
    bytes_b = bytes_f + (x.size + dy.size + x.size) * 4   # backward reads x, dy, writes dx
    name = f"maxpool2d 2x2 ({N}, {Hh}, {W}, {C}) NHWC"
    try:
        torch = _torch()
        F = torch.nn.functional
        xt = torch.as_tensor(x, device="cuda").permute(0, 3, 1, 2)   # NCHW view of NHWC = channels_last
        assert xt.is_contiguous(memory_format=torch.channels_last)
        xg = xt.detach().clone(memory_format=torch.channels_last).requires_grad_(True)
        dyt = torch.as_tensor(dy, device="cuda").permute(0, 3, 1, 2)

        def t_fwd():
            with torch.no_grad():
                F.max_pool2d(xt, 2)

        def t_fwd_bwd():
            F.max_pool2d(xg, 2).backward(dyt)

        ref_f = torch_cuda_time_ms(t_fwd, repeat=10, inner=10)
        ref_b = torch_cuda_time_ms(t_fwd_bwd, repeat=10, inner=10)
        yield (f"{name} fwd", f"{ours_f:.4f}", "torch channels_last", f"{ref_f:.4f}", f"{ref_f / ours_f:.2f}",
               f"{bytes_f / (ours_f * 1e-3) / 1e12:.2f} TB/s")
        yield (f"{name} fwd+bwd", f"{ours_b:.4f}", "torch channels_last (autograd)", f"{ref_b:.4f}",
               f"{ref_b / ours_b:.2f}", f"{bytes_b / (ours_b * 1e-3) / 1e12:.2f} TB/s")
    except Exception as e:  # noqa: BLE001
        yield (f"{name} fwd", f"{ours_f:.4f}", f"torch failed: {type(e).__name__}", "-", "-",
               f"{bytes_f / (ours_f * 1e-3) / 1e12:.2f} TB/s")
        yield (f"{name} fwd+bwd", f"{ours_b:.4f}", f"torch failed: {type(e).__name__}", "-", "-",
               f"{bytes_b / (ours_b * 1e-3) / 1e12:.2f} TB/s")


def _bn_rows(cp, k):
    N, Hh, W, C = 256, 28, 28, 32
    rng = cp.random.default_rng(2)
    x = _uniform(cp, rng, (N, Hh, W, C), -1, 1)
    dy = _uniform(cp, rng, x.shape, -1, 1)
    g, bt = cp.ones(C, cp.float32), cp.zeros(C, cp.float32)
    mm, mv = cp.zeros(C, cp.float32), cp.ones(C, cp.float32)
    mean, inv = cp.empty(C, cp.float32), cp.empty(C, cp.float32)
    y, dx = cp.empty_like(x), cp.empty_like(x)
    dg, db = cp.zeros(C, cp.float32), cp.zeros(C, cp.float32)

    def step():
        k.batchnorm_forward(x, g, bt, mm, mv, mean, inv, y)
        k.batchnorm_backward(x, dy, g, mean, inv, dx, dg, db)

    ours = cuda_time_ms(step, repeat=10, inner=5)
    nbytes = x.size * 4 * 7   # fwd: x twice + x, y; bwd: x, dy twice + dx (a lower bound)
    name = f"batchnorm train fwd+bwd ({N}, {Hh}, {W}, {C})"
    try:
        torch = _torch()
        bn = torch.nn.BatchNorm2d(C).cuda().to(memory_format=torch.channels_last)
        xt = torch.as_tensor(x, device="cuda").permute(0, 3, 1, 2).detach().requires_grad_(True)
        dyt = torch.as_tensor(dy, device="cuda").permute(0, 3, 1, 2)
        ref = torch_cuda_time_ms(lambda: bn(xt).backward(dyt), repeat=10, inner=5)
        yield (name, f"{ours:.4f}", "torch BatchNorm2d channels_last", f"{ref:.4f}", f"{ref / ours:.2f}",
               f"{nbytes / (ours * 1e-3) / 1e12:.2f} TB/s")
    except Exception as e:  # noqa: BLE001
        yield (name, f"{ours:.4f}", f"torch failed: {type(e).__name__}", "-", "-",
               f"{nbytes / (ours * 1e-3) / 1e12:.2f} TB/s")


def rows():
    import cupy as cp
    from kilnet import _cuda as k
    k.set_tf32(False)
    yield from _lstm_rows(cp, k)
    yield from _pool_rows(cp, k)
    yield from _bn_rows(cp, k)


if __name__ == "__main__":
    print(f"# host: {machine()}")
    print(fmt_row(HEADER))
    for r in rows():
        print(fmt_row(r), flush=True)
