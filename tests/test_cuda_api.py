"""kilnet._cuda mirrors kilnet._cpu: every kernel function exists on both devices with the same
argument names, order and defaults (plus `stream`, and `out` for functions returning a value).
Runs without a GPU: importing _cuda and reading its signatures needs none."""
import re

import pytest

from kilnet import _cpu

_cuda = pytest.importorskip("kilnet._cuda", reason="kilnet was built without CUDA")

# Facts of the host and checks that need no device: the SIMD and bfloat16 levels, the geometry
# rules the layers apply at build (the same C++ rules every binding of both modules calls).
HOST_ONLY = {"build_info", "get_num_threads", "set_num_threads", "simd_level", "ref", "fma_peak_gflops",
             "bf16_dot_peak_gflops", "cpu_has_avx512bf16", "gemm_kernel", "stages_store_ahead", "malloc_policy",
             "machine_simd_level", "bf16_level", "conv2d_check_geometry", "pool2d_check_geometry",
             "normal_fill", "philox4x32_10", "conv2d_backward_per_example"}


def _kernels():
    return sorted(n for n in dir(_cpu) if not n.startswith("_") and n not in HOST_ONLY)


def _params(fn):
    """[(name, default-or-None)] from pybind11's signature line, types dropped."""
    head = fn.__doc__.splitlines()[0]
    inner = head[head.index("(") + 1: head.rindex(") ->")]
    out, depth, cur = [], 0, ""
    for ch in inner:   # split on top-level commas (types may hold brackets)
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    params = []
    for p in out:
        name = p.split(":")[0].strip()
        default = p.split("=", 1)[1].strip() if "=" in p else None
        params.append((name, default))
    return params


# Kernels written this far for the CPU only (the layers refuse the GPU clearly or fall back to
# other CUDA kernels there); each is a known gap, listed so a new one cannot slip in silently.
CPU_ONLY = {"conv2d_backward_input", "depthwise2d_forward", "depthwise2d_backward", "gelu_forward",
            "gelu_backward", "gemm_bf16", "to_bfloat16", "from_bfloat16", "add_bfloat16",
            "conv_dense_forward", "conv_dense_backward",   # the fused head: the CPU's cache problem
            "conv_dense_per_example", "conv_dense_per_example_direct",
            "attention_forward_bf16", "attention_backward_bf16"}   # AMX products; ops falls back to float32


def test_every_cpu_kernel_exists_on_cuda():
    missing = [n for n in _kernels() if not hasattr(_cuda, n) and n not in CPU_ONLY]
    assert not missing, f"kilnet._cuda lacks {missing}"


@pytest.mark.parametrize("name", _kernels())
def test_same_arguments(name):
    if not hasattr(_cuda, name):
        pytest.skip("missing (reported by test_every_cpu_kernel_exists_on_cuda)")
    cpu, cuda = _params(getattr(_cpu, name)), _params(getattr(_cuda, name))
    extra = [p for p in cuda[len(cpu):]]
    assert cuda[:len(cpu)] == cpu, f"{name}: _cpu{cpu} vs _cuda{cuda}"
    launches = name != "rnn_workspace_size"   # a size query: nothing runs on a stream
    allowed = (["stream"], ["out", "stream"], ["stream", "out"]) if launches else ([],)
    assert [n for n, _ in extra] in allowed, extra
    assert all(d == "None" for _, d in extra)
    returns = getattr(_cpu, name).__doc__.splitlines()[0].rsplit("-> ", 1)[1]
    if returns == "float":
        assert "out" in [n for n, _ in extra], f"{name} returns a value: _cuda needs out="
