"""GPU optimizer step and fused loss: kilnet._cuda.adam_update over 64M parameters (one fused
launch over the flat buffer) against torch.optim.Adam(fused=True) and against a plain
device-to-device copy of the same number of bytes measured in the same run (the memory ceiling:
Adam moves 28 bytes per parameter, reading p g m v and writing p m v); and
softmax_crossentropy (logits -> loss + gradient, the out= form the training loop uses) against
PyTorch's cross_entropy forward + backward. Run as a script for the table; `rows()` for
gpu_check.sh."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_timing import HEADER, cuda_time_ms, fmt_row, torch_cuda_time_ms  # noqa: E402
from machine_info import machine  # noqa: E402  (the host line of the header)

N_PARAMS = 64 * 1024 * 1024
ADAM_BYTES = 28   # per parameter: read p, g, m, v (16) + write p, m, v (12)


def _tbs(nbytes, ms):
    return nbytes / (ms * 1e-3) / 1e12


def _copy_ms(cp, nbytes):
    """A plain cudaMemcpyAsync device-to-device of nbytes: moves 2 * nbytes (read + write)."""
    src = cp.empty(nbytes // 4, cp.float32)
    dst = cp.empty_like(src)
    src.fill(1.0)
    stream = cp.cuda.get_current_stream()
    return cuda_time_ms(lambda: dst.data.copy_from_device_async(src.data, src.nbytes, stream),
                        warmup=3, repeat=20)


def rows():
    import cupy as cp
    import numpy as np
    from kilnet import _cuda as k

    n = N_PARAMS
    rng = cp.random.default_rng(0)
    p = rng.standard_normal(n, dtype=cp.float32)
    g = rng.standard_normal(n, dtype=cp.float32)
    m = cp.zeros(n, cp.float32)
    v = cp.zeros(n, cp.float32)
    step = [0]

    def adam():
        step[0] += 1
        k.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-7, step[0])

    ours = cuda_time_ms(adam, warmup=3, repeat=20)
    nbytes = ADAM_BYTES * n
    # The copy moving the same bytes: nbytes/2 read + nbytes/2 written.
    copy = _copy_ms(cp, nbytes // 2)
    bw_copy = _tbs(nbytes, copy)
    bw_ours = _tbs(nbytes, ours)
    label = f"adam 64M params ({nbytes / 1e9:.2f} GB moved)"
    yield (label, f"{ours:.3f}", "D2D copy, same bytes", f"{copy:.3f}", f"{copy / ours:.2f}",
           f"{bw_ours:.2f} TB/s ({100 * bw_ours / bw_copy:.0f}% of copy {bw_copy:.2f} TB/s)")
    try:
        import torch
        tp = torch.as_tensor(p, device="cuda").clone().requires_grad_(True)
        tp.grad = torch.as_tensor(g, device="cuda").clone()
        opt = torch.optim.Adam([tp], lr=1e-3, betas=(0.9, 0.999), eps=1e-7, fused=True)
        ref = torch_cuda_time_ms(opt.step, warmup=3, repeat=20)
        yield (label, f"{ours:.3f}", "torch Adam(fused=True)", f"{ref:.3f}", f"{ref / ours:.2f}",
               f"{bw_ours:.2f} TB/s (torch {_tbs(nbytes, ref):.2f} TB/s)")
        del tp, opt
    except Exception as e:  # noqa: BLE001
        yield (label, f"{ours:.3f}", f"torch failed: {type(e).__name__}: {e}"[:80], "-", "-", f"{bw_ours:.2f} TB/s")
    del p, g, m, v
    cp.get_default_memory_pool().free_all_blocks()

    # Fused softmax + cross-entropy: loss (written on the device) and the logits' gradient.
    for rows_, cols in [(256, 10), (4096, 1000)]:
        x = rng.standard_normal((rows_, cols), dtype=cp.float32)
        lab = cp.asarray(np.random.default_rng(1).integers(0, cols, rows_), dtype=cp.int64)
        grad = cp.empty_like(x)
        out = cp.empty((1,), cp.float32)
        ours = cuda_time_ms(lambda: k.softmax_crossentropy(x, labels=lab, grad=grad, out=out),
                            warmup=5, repeat=30, inner=10)
        nb = 2 * x.nbytes + lab.nbytes
        label = f"softmax_crossentropy {rows_}x{cols} (loss+grad)"
        try:
            import torch
            import torch.nn.functional as F
            tx = torch.as_tensor(x, device="cuda").clone().requires_grad_(True)
            tl = torch.as_tensor(lab, device="cuda")

            def torch_ce():
                loss = F.cross_entropy(tx, tl)
                return torch.autograd.grad(loss, tx)

            ref = torch_cuda_time_ms(torch_ce, warmup=5, repeat=30, inner=10)
            yield (label, f"{ours:.4f}", "torch cross_entropy fwd+bwd", f"{ref:.4f}", f"{ref / ours:.2f}",
                   f"{_tbs(nb, ours):.2f} TB/s")
        except Exception as e:  # noqa: BLE001
            yield (label, f"{ours:.4f}", f"torch failed: {type(e).__name__}", "-", "-", f"{_tbs(nb, ours):.2f} TB/s")
        # The value-returning form synchronizes (a host round trip per call).
        sync = cuda_time_ms(lambda: k.softmax_crossentropy(x, labels=lab, grad=grad), warmup=3, repeat=20)
        yield (label + " returning the value (sync)", f"{sync:.4f}", "-", "-", "-", f"{_tbs(nb, sync):.2f} TB/s")


if __name__ == "__main__":
    print(f"# host: {machine()}")
    print(fmt_row(HEADER))
    for r in rows():
        print(fmt_row(r), flush=True)
