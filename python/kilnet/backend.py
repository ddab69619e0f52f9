"""The one place that picks a kernel module: numpy arrays go to kilnet._cpu, CuPy arrays to
kilnet._cuda (when it was compiled and a GPU is usable)."""
from __future__ import annotations

import os

from kilnet import _cpu

__all__ = ["cpu", "get_num_threads", "set_num_threads", "simd_level", "cuda_available", "cuda_module"]

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


def get_num_threads() -> int:
    """Number of OpenMP threads the CPU kernels use."""
    return _cpu.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of CPU threads the kernels use (default: all cores, or $OMP_NUM_THREADS)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _cpu.set_num_threads(n)


def simd_level() -> str:
    """'avx2' when the AVX2/FMA kernels run, 'scalar' for the portable fallback."""
    return _cpu.simd_level()


if "KILNET_NUM_THREADS" in os.environ:
    set_num_threads(int(os.environ["KILNET_NUM_THREADS"]))
