"""kilnet.utils.blas_threads(n): limit the other libraries' BLAS thread pools (numpy's OpenBLAS,
MKL, BLIS...) to n threads inside a `with` block, through threadpoolctl (as scikit-learn does).

Why: a BLAS pool's idle workers keep spinning on the cores for a while after each call (OpenBLAS:
about 0.1 s), so a loop that alternates numpy matrix products with kilnet kernels makes kilnet's
threads wait for a core (docs/performance.md, "Sharing the cores"). With numpy's BLAS on one
thread there is no idle worker left to spin. Only BLAS pools are limited: kilnet's own threads
(kilnet.set_num_threads) and OpenMP runtimes are left as they are."""
from __future__ import annotations

import contextlib
import numbers

__all__ = ["blas_threads"]


@contextlib.contextmanager
def blas_threads(n: int = 1):
    """Inside the block, every BLAS library loaded in the process runs on at most `n` threads;
    the counts found are put back on exit (also after an exception). Needs threadpoolctl
    (`pip install threadpoolctl`): without it, ImportError says so."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"blas_threads: n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"blas_threads: n must be >= 1, got {n}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise ImportError("kilnet.utils.blas_threads needs threadpoolctl to reach numpy's BLAS "
                          "thread pool: pip install threadpoolctl") from e
    limits = threadpool_limits(limits=int(n), user_api="blas")
    try:
        yield
    finally:
        limits.restore_original_limits()
