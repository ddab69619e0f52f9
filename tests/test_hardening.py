"""Hardening (issue 22): bounded readers and an import that never fails on bad environment
variables."""
import gzip
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from kilnet.datasets.idx import read_idx


def _idx(dims, payload=b"", dtype_code=0x08):
    head = bytes([0, 0, dtype_code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return head + payload


def test_idx_refuses_a_declared_size_over_the_limit_before_reading(tmp_path):
    p = tmp_path / "huge.gz"
    with gzip.open(p, "wb") as f:
        f.write(_idx([2**31 - 1, 2**31 - 1]))
    with pytest.raises(ValueError, match="declares .* bytes"):
        read_idx(p)


def test_idx_gzip_bomb_is_bounded(tmp_path):
    p = tmp_path / "bomb.gz"
    with gzip.open(p, "wb", compresslevel=9) as f:   # declares 1 KB, inflates to 64 MB
        f.write(_idx([1024]))
        zeros = bytes(1 << 20)
        for _ in range(64):
            f.write(zeros)
    assert os.path.getsize(p) < 200_000
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 2 and peak < 10 << 20


def test_idx_round_trip_and_truncation(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "ok"
    p.write_bytes(_idx(x.shape, x.tobytes()))
    np.testing.assert_array_equal(read_idx(p), x)
    p.write_bytes(_idx(x.shape, x.tobytes()[:-1]))
    with pytest.raises(ValueError, match="expected 24 data bytes"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x03\x00")
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(p)


@pytest.mark.parametrize("env", [{"KILNET_NUM_THREADS": ""}, {"KILNET_NUM_THREADS": "abc"},
                                 {"KILNET_NUM_THREADS": "-3"}, {"KILNET_NUM_THREADS": "99999999999"},
                                 {"KILNET_SIMD": "avx9"}, {"KILNET_DATA": "/nonexistent/dir"}])
def test_bad_environment_warns_and_imports(env):
    code = ("import warnings; warnings.simplefilter('always');\n"
            "import kilnet\n"
            "from kilnet.datasets.idx import search_dirs; search_dirs('x')\n"
            "print('threads', kilnet.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "RuntimeWarning" in out.stderr and list(env)[0] in out.stderr
    assert "threads" in out.stdout
