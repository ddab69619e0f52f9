"""Timing helpers shared by the GPU benchmarks (bench_gpu_*.py).

Device work is asynchronous, so every measurement brackets the calls with CUDA events on the
current stream, after warm-up, and reports the median of several repeats (the device machines
are shared: medians, not means). Each bench_gpu_*.py exposes `rows()` that yields table rows and
runs on its own as a script; benchmarks/gpu_check.sh runs them all and prints one table.
"""
from __future__ import annotations

import statistics


def cuda_time_ms(fn, warmup=3, repeat=20, inner=1):
    """Median milliseconds of one fn() call, timed with CUDA events (inner calls per event pair,
    to amortize the event overhead for very short kernels)."""
    import cupy as cp
    for _ in range(warmup):
        fn()
    cp.cuda.get_current_stream().synchronize()
    times = []
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(repeat):
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / inner)
    return statistics.median(times)


def torch_cuda_time_ms(fn, warmup=3, repeat=20, inner=1):
    """The same for PyTorch work (its own current stream)."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(repeat):
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / inner)
    return statistics.median(times)


def gpu_name() -> str:
    import cupy as cp
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def fmt_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


HEADER = ("benchmark", "kilnet ms", "reference", "ref ms", "ref/kilnet", "kilnet rate")
