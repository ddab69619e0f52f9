"""The one place that picks a kernel module: numpy arrays go to kilnet._cpu, CuPy arrays to
kilnet._cuda (when it was compiled and a GPU is usable). Devices are named 'cpu' and 'cuda'
(or 'cuda:N', 'gpu'); `kilnet.device('cuda')` makes models built inside it live on the GPU."""
from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from kilnet import _cpu

__all__ = ["cpu", "get_num_threads", "set_num_threads", "simd_level", "machine_simd_level", "fma_peak_gflops", "cuda_available", "cuda_module",
           "device", "current_device", "normalize_device", "kernels_for", "xp_for", "device_of", "to_device"]

cpu = _cpu

_cuda_state: tuple | None = None  # (module or None, reason)


def _load_cuda():
    global _cuda_state
    if _cuda_state is None:
        try:
            from kilnet import _cuda  # type: ignore[attr-defined]
        except ImportError as e:  # built without nvcc, or libcudart missing
            _cuda_state = (None, f"kilnet._cuda is not built ({e})")
        else:
            n = _cuda.device_count()
            _cuda_state = (_cuda, "") if n > 0 else (None, "kilnet._cuda is built but no GPU is usable")
    return _cuda_state


def cuda_compiled() -> bool:
    """True when kilnet was built with its CUDA module."""
    try:
        from kilnet import _cuda  # noqa: F401  # type: ignore[attr-defined]
    except ImportError:
        return False
    return True


def cuda_available() -> bool:
    """True when kilnet._cuda was built and at least one GPU is usable."""
    return _load_cuda()[0] is not None


def cuda_module():
    """kilnet._cuda, or RuntimeError saying why it cannot be used (the CPU path still works)."""
    mod, why = _load_cuda()
    if mod is None:
        raise RuntimeError(f"CUDA is not available: {why}; kilnet runs on the CPU")
    return mod


def normalize_device(name) -> str:
    """'cpu' or 'cuda' from 'cpu', 'cuda', 'cuda:0', 'gpu' (any case); ValueError otherwise.
    'cuda:N' selects GPU N as CuPy's current device."""
    if not isinstance(name, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(name).__name__}")
    low = name.strip().lower()
    if low == "cpu":
        return "cpu"
    if low in ("cuda", "gpu") or low.startswith(("cuda:", "gpu:")):
        cuda_module()   # raises RuntimeError saying why when there is no usable GPU
        if ":" in low:
            idx = low.split(":", 1)[1]
            if not idx.isdigit():
                raise ValueError(f"device {name!r}: expected 'cuda:<index>'")
            import cupy
            n = cupy.cuda.runtime.getDeviceCount()
            if int(idx) >= n:
                raise ValueError(f"device {name!r}: only {n} GPU(s) are visible")
            cupy.cuda.Device(int(idx)).use()
        return "cuda"
    raise ValueError(f"unknown device {name!r}; valid: 'cpu', 'cuda', 'cuda:N'")


_default = threading.local()


def current_device() -> str:
    """The device new models are placed on: 'cpu' unless inside `with kilnet.device('cuda')`."""
    return getattr(_default, "name", "cpu")


@contextlib.contextmanager
def device(name):
    """`with kilnet.device('cuda'): model = Sequential(...)` builds (and fits) the model on the
    GPU; arrays passed to fit/predict stay numpy and are moved batch by batch or all at once."""
    dev = normalize_device(name)
    old = current_device()
    _default.name = dev
    try:
        yield dev
    finally:
        _default.name = old


def is_cuda_array(a) -> bool:
    return not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__")


def device_of(a) -> str:
    return "cuda" if is_cuda_array(a) else "cpu"


def kernels_for(a):
    """kilnet._cpu for a numpy array, kilnet._cuda for a CuPy array: the kernels follow the data."""
    return cuda_module() if is_cuda_array(a) else _cpu


def xp_for(a):
    """numpy or cupy, whichever module owns the array."""
    if is_cuda_array(a):
        import cupy
        return cupy
    return np


def xp_of_device(dev):
    if dev == "cuda":
        import cupy
        return cupy
    return np


def to_device(a, dev):
    """a as a contiguous float32/int array on `dev` (a copy only when it has to move)."""
    if a is None:
        return None
    if dev == "cuda":
        import cupy
        return cupy.ascontiguousarray(cupy.asarray(a))
    if is_cuda_array(a):
        import cupy
        return cupy.asnumpy(a)
    return a


def get_num_threads() -> int:
    """Number of OpenMP threads the CPU kernels use."""
    return _cpu.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of CPU threads the kernels use (default: all cores, or $OMP_NUM_THREADS)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _cpu.set_num_threads(n)


def simd_level() -> str:
    """The kernel path in use: 'avx512' (AVX-512 F/BW/VL/DQ enabled by the CPU and the OS),
    'avx2' (AVX2 + FMA) or 'scalar' (portable). KILNET_SIMD=avx2|scalar lowers it."""
    return _cpu.simd_level()


def machine_simd_level() -> str:
    """The best level this build runs on this machine (what KILNET_SIMD can lower)."""
    return _cpu.machine_simd_level()


def fma_peak_gflops(threads: int = 1, seconds: float = 0.2, simd: str = "") -> float:
    """Measured FMA peak in GFLOP/s over `threads` threads at SIMD level `simd` (default: the
    level in use; never above it)."""
    return _cpu.fma_peak_gflops(threads, seconds, simd)


def gemm_kernel() -> str:
    """The SGEMM micro-kernel of wide products: 'avx512 12x32', 'avx2 6x16' (also on AVX-512 CPUs
    that split 512-bit FMAs, Zen 4, unless KILNET_GEMM=avx512) or 'portable'."""
    return _cpu.gemm_kernel()


def stages_store_ahead() -> bool:
    """Whether kernels write an output lying just ahead of an input (modulo 2 MiB) through
    staging buffers: on Intel, where that layout stalls; KILNET_STAGING=on|off overrides."""
    return _cpu.stages_store_ahead()


def malloc_policy() -> str:
    """How freed large arrays are kept: 'kept (...)' where kilnet set glibc's mmap and trim
    thresholds at import (arrays up to 32 MiB reused from the heap instead of page-faulted in
    again every step), else 'system (why)'. KILNET_MALLOC=system keeps the process's defaults."""
    return _cpu.malloc_policy()


def bf16_level() -> str:
    """The bfloat16 GEMM path: 'amx' (AMX-BF16 tiles), 'avx512bf16' (VDPBF16PS, no AMX) or 'fp32'
    (float32 GEMMs on the rounded operands). KILNET_BF16=avx512bf16|fp32 lowers it."""
    return _cpu.bf16_level()


def bf16_dot_peak_gflops(threads: int = 1, seconds: float = 0.2):
    """Measured VDPBF16PS peak in GFLOP/s over `threads` threads; None where the CPU (or
    KILNET_SIMD) gives no AVX512-BF16."""
    return _cpu.bf16_dot_peak_gflops(threads, seconds) if _cpu.cpu_has_avx512bf16() else None


def build_info() -> str:
    """The CPU kernels' build facts: compiler, build type, OpenMP, whether the AVX2 kernels
    were compiled."""
    return _cpu.build_info()


def cuda_compiled_module():
    """kilnet._cuda when kilnet was built with it (whether or not a GPU is usable), else None."""
    try:
        from kilnet import _cuda  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _cuda


def _threads_from_environment():
    """KILNET_NUM_THREADS=n; a bad value warns and leaves the default (import never fails)."""
    raw = os.environ.get("KILNET_NUM_THREADS")
    if raw is None:
        return
    try:
        n = int(raw.strip())
        if n < 1 or n > 4096:
            raise ValueError
    except ValueError:
        import warnings
        warnings.warn(f"KILNET_NUM_THREADS={raw!r} is not a thread count from 1 to 4096; using the default "
                      f"({get_num_threads()})", RuntimeWarning, stacklevel=2)
        return
    set_num_threads(n)


def _check_simd_environment():
    raw = os.environ.get("KILNET_SIMD")
    levels = ("scalar", "avx2", "avx512")
    if raw is None:
        return
    import warnings
    if raw not in levels:
        warnings.warn(f"KILNET_SIMD={raw!r} is not one of 'scalar', 'avx2', 'avx512'; ignored (running "
                      f"{simd_level()})", RuntimeWarning, stacklevel=2)
    elif levels.index(raw) > levels.index(simd_level()):
        warnings.warn(f"KILNET_SIMD={raw!r} is above what this machine and build run "
                      f"({_cpu.machine_simd_level()}); running {simd_level()}", RuntimeWarning, stacklevel=2)


def _check_choice(var, allowed, in_use):
    """A KILNET_* variable that names one of `allowed`: any other value warns, naming what runs
    instead (in_use() is called only then), and is ignored (import never fails)."""
    raw = os.environ.get(var)
    if raw is None or raw in allowed:
        return
    names = [repr(a) for a in allowed]
    want = names[0] if len(names) == 1 else (" or ".join(names) if len(names) == 2
                                             else "one of " + ", ".join(names))
    import warnings
    warnings.warn(f"{var}={raw!r} is not {want}; ignored ({in_use()})", RuntimeWarning, stacklevel=2)


_threads_from_environment()
_check_simd_environment()
_check_choice("KILNET_STAGING", ("on", "off"), lambda: f"staging {'on' if _cpu.stages_store_ahead() else 'off'}")
_check_choice("KILNET_MALLOC", ("system",), lambda: f"allocator: {_cpu.malloc_policy()}")
_check_choice("KILNET_BF16", ("amx", "avx512bf16", "fp32"), lambda: f"running {_cpu.bf16_level()}")
_check_choice("KILNET_GEMM", ("avx512",), lambda: f"running {_cpu.gemm_kernel()}")
