"""GPU SGEMM: kilnet._cuda.gemm against cuBLAS (CuPy float32 matmul, TF32 off) and, for the TF32
row, PyTorch with allow_tf32=True. Run as a script for the table; `rows()` for gpu_check.sh."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_timing import HEADER, cuda_time_ms, fmt_row, torch_cuda_time_ms  # noqa: E402
from machine_info import machine  # noqa: E402  (the host line of the header)

# The canonical model's Dense layer at batch 32: forward, weight gradient, input gradient.
NN_SHAPES = [("dense fwd 32x10x5408", 32, 10, 5408, False, False),
             ("dense dW 5408x10x32 (A^T)", 5408, 10, 32, True, False),
             ("dense dX 32x5408x10 (B^T)", 32, 5408, 10, False, True),
             ("dense fwd 256x10x5408", 256, 10, 5408, False, False)]


def _tflops(M, N, K, ms):
    return 2.0 * M * N * K / (ms * 1e-3) / 1e12


def _cupy_ref(cp, a, b, ta, tb, c):
    oa = a.T if ta else a
    ob = b.T if tb else b
    return lambda: cp.matmul(oa, ob, out=c)


def rows():
    import cupy as cp
    from kilnet import _cuda as k
    k.set_tf32(False)
    rng = cp.random.default_rng(0)

    # 4096^3, fp32 against cuBLAS fp32.
    n = 4096
    a = rng.standard_normal((n, n), dtype=cp.float32)
    b = rng.standard_normal((n, n), dtype=cp.float32)
    c = cp.empty((n, n), cp.float32)
    ours = cuda_time_ms(lambda: k.gemm(a, b, c), warmup=3, repeat=10)
    try:
        ref = cuda_time_ms(lambda: cp.matmul(a, b, out=c), warmup=3, repeat=10)
        yield ("sgemm 4096^3 NN fp32", f"{ours:.3f}", "cupy (cuBLAS fp32)", f"{ref:.3f}",
               f"{ref / ours:.2f}", f"{_tflops(n, n, n, ours):.1f} TFLOP/s ({100 * ref / ours:.0f}% of cuBLAS)")
    except Exception as e:  # noqa: BLE001
        yield ("sgemm 4096^3 NN fp32", f"{ours:.3f}", f"cupy failed: {e}", "-", "-",
               f"{_tflops(n, n, n, ours):.1f} TFLOP/s")

    # The transposed variants at 4096^3 (vs the same cuBLAS call).
    for ta, tb in [(True, False), (False, True)]:
        ours_t = cuda_time_ms(lambda: k.gemm(a, b, c, ta, tb), warmup=2, repeat=5)
        try:
            ref_t = cuda_time_ms(_cupy_ref(cp, a, b, ta, tb, c), warmup=2, repeat=5)
            yield (f"sgemm 4096^3 {'T' if ta else 'N'}{'T' if tb else 'N'} fp32", f"{ours_t:.3f}",
                   "cupy (cuBLAS fp32)", f"{ref_t:.3f}", f"{ref_t / ours_t:.2f}",
                   f"{_tflops(n, n, n, ours_t):.1f} TFLOP/s ({100 * ref_t / ours_t:.0f}% of cuBLAS)")
        except Exception as e:  # noqa: BLE001
            yield (f"sgemm 4096^3 {ta}{tb}", f"{ours_t:.3f}", f"cupy failed: {e}", "-", "-", "-")

    # 4096^3 with TF32 tensor cores against torch allow_tf32=True.
    try:
        k.set_tf32(True)
        ours_tf = cuda_time_ms(lambda: k.gemm(a, b, c), warmup=3, repeat=10)
    finally:
        k.set_tf32(False)
    try:
        import torch
        ta_ = torch.as_tensor(a, device="cuda")
        tb_ = torch.as_tensor(b, device="cuda")
        tc_ = torch.empty((n, n), device="cuda", dtype=torch.float32)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            ref_tf = torch_cuda_time_ms(lambda: torch.matmul(ta_, tb_, out=tc_), warmup=3, repeat=10)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        yield ("sgemm 4096^3 NN TF32", f"{ours_tf:.3f}", "torch (cuBLAS TF32)", f"{ref_tf:.3f}",
               f"{ref_tf / ours_tf:.2f}",
               f"{_tflops(n, n, n, ours_tf):.1f} TFLOP/s ({100 * ref_tf / ours_tf:.0f}% of cuBLAS TF32)")
    except Exception as e:  # noqa: BLE001
        yield ("sgemm 4096^3 NN TF32", f"{ours_tf:.3f}", f"torch failed: {type(e).__name__}", "-", "-",
               f"{_tflops(n, n, n, ours_tf):.1f} TFLOP/s")
    del a, b, c

    # The canonical model's shapes (launch-bound: 20 calls per event pair).
    for name, M, N, K, ta, tb in NN_SHAPES:
        a = rng.standard_normal((K, M) if ta else (M, K), dtype=cp.float32)
        b = rng.standard_normal((N, K) if tb else (K, N), dtype=cp.float32)
        c = cp.empty((M, N), cp.float32)
        bias = rng.standard_normal(N, dtype=cp.float32)
        ours = cuda_time_ms(lambda: k.gemm(a, b, c, ta, tb, bias=bias), repeat=10, inner=20)
        try:
            ref = cuda_time_ms(_cupy_ref(cp, a, b, ta, tb, c), repeat=10, inner=20)
            yield (name, f"{ours:.4f}", "cupy (cuBLAS fp32, no bias)", f"{ref:.4f}", f"{ref / ours:.2f}",
                   f"{2.0 * M * N * K / (ours * 1e-3) / 1e9:.0f} GFLOP/s")
        except Exception as e:  # noqa: BLE001
            yield (name, f"{ours:.4f}", f"cupy failed: {e}", "-", "-", "-")

    # bias_backward of the dense layer (dy 5408 x ... is the conv case: 5408*32 rows x 32).
    for M, N in [(32, 10), (173056, 32)]:
        dy = rng.standard_normal((M, N), dtype=cp.float32)
        db = cp.zeros(N, cp.float32)
        ours = cuda_time_ms(lambda: k.bias_backward(dy, db), repeat=10, inner=20)
        ref = cuda_time_ms(lambda: dy.sum(axis=0), repeat=10, inner=20)
        yield (f"bias_backward {M}x{N}", f"{ours:.4f}", "cupy sum(axis=0)", f"{ref:.4f}", f"{ref / ours:.2f}",
               f"{M * N * 4 / (ours * 1e-3) / 1e12:.2f} TB/s")


if __name__ == "__main__":
    print(f"# host: {machine()}")
    print(fmt_row(HEADER))
    for r in rows():
        print(fmt_row(r), flush=True)
