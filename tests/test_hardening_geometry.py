"""Hardening (issue 22): the geometry arguments of the sliding-window kernels (strides, padding,
dilation, pool sizes, output sizes) are checked before anything is allocated, and layers refuse
at construction and build what the kernels would refuse.

The fuzz runs in a subprocess under RLIMIT_AS (4 GB): a geometry that slips past the checks
shows up as a signal (std::bad_alloc abort, segfault) or as an exception other than
ValueError/TypeError, and the subprocess prints the call it was making."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kilnet
from kilnet import _cpu, layers

BIG = [0, 1, 2, 3, -1, -2, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**32, 2**32 + 1, 2**40, 2**62,
       2**63 - 2, 2**63 - 1, -2**31, -2**63, 2**24, 2**26]

# The fuzz: one hypothesis test per kernel family; each call's arguments are printed (flushed)
# before the call, so a crash names its geometry. Arrays stay small; geometry values range over
# all of int64 (pybind11 refuses anything wider with TypeError).
FUZZ = textwrap.dedent(r"""
    import os, resource, sys
    limit = int(os.environ["FUZZ_AS_BYTES"])
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    # Under AddressSanitizer (.ci/sanitize.sh preloads it) the shadow memory needs terabytes of
    # address space: no RLIMIT_AS there; ASan itself refuses huge allocations
    # (allocator_may_return_null) and reports any out-of-bounds access.
    ASAN = "asan" in os.environ.get("LD_PRELOAD", "")
    def set_as(n):
        if not ASAN:
            resource.setrlimit(resource.RLIMIT_AS, (n, hard))
    set_as(limit)   # the soft limit: threads() raises it
    import numpy as np
    from hypothesis import given, settings, strategies as st, HealthCheck
    from kilnet import _cpu, layers

    big = st.sampled_from(BIG_VALUES)
    geom = st.one_of(st.integers(-3, 9), big, st.integers(-2**63, 2**63 - 1),
                     st.integers(2**31 - 4, 2**31 + 4), st.integers(2**63 - 5, 2**63 - 1),
                     st.builds(lambda k, d: 2**k + d, st.integers(8, 62), st.integers(-3, 3)))
    I64 = 2**63 - 1

    def same_pad(pad, R, dil, same):
        # In 'same' mode the padding follows the dilation, (R - 1) * dilation // 2, as a layer
        # computes it: deep geometries that pass the range checks of each value alone.
        if not same:
            return pad
        return tuple(max(-I64 - 1, min(I64, (r - 1) * d // 2)) for r, d in zip(R, dil))
    pair = st.tuples(geom, geom)
    small = st.integers(0, 5)
    pos = st.integers(1, 5)
    out_dim = st.integers(0, 9)

    def call(name, fn, *args):
        print(name, [a.shape if isinstance(a, np.ndarray) else a for a in args], file=sys.stderr, flush=True)
        try:
            fn(*args)
        except (ValueError, TypeError):
            pass

    def arr(*shape):
        return np.full(shape, 0.5, np.float32)

    cfg = settings(max_examples=int(os.environ["FUZZ_EXAMPLES"]), deadline=None, derandomize=True,
                   database=None, suppress_health_check=list(HealthCheck))
    mods = [_cpu, _cpu.ref]

    @cfg
    @given(st.sampled_from([0, 1]), small, pos, pos, pos, pos, pos, pos, out_dim, out_dim, pair, pair, pair,
           st.sampled_from(["linear", "relu"]), st.booleans())
    def conv(m, N, H, W, C, R, S, K, P, Q, stride, pad, dil, act, same):
        k = mods[m]
        pad = same_pad(pad, (R, S), dil, same)
        x, w, y, b = arr(N, H, W, C), arr(R, S, C, K), arr(N, P, Q, K), arr(K)
        call("conv2d_forward", k.conv2d_forward, x, w, b, y, stride, pad, dil, act)
        call("conv2d_backward", k.conv2d_backward, y, x, w, arr(N, H, W, C), arr(R, S, C, K), arr(K),
             stride, pad, dil, "linear", None)
        call("conv2d_backward_input", k.conv2d_backward_input, y, w, arr(N, H, W, C), stride, pad, dil,
             "linear", None)
        wd = arr(P * Q * K, 2)   # the fused Conv2D -> Flatten -> Dense: the same geometry rules
        call("conv_dense_forward", k.conv_dense_forward, x, w, b, wd, arr(2), arr(N, 2), stride, pad, dil,
             (P, Q), act)
        call("conv_dense_backward", k.conv_dense_backward, x, w, b, wd, arr(N, 2), arr(R, S, C, K), arr(K),
             arr(P * Q * K, 2), arr(2), stride, pad, dil, (P, Q), act, True)

    @cfg
    @given(st.sampled_from([0, 1]), small, pos, pos, pos, pos, pos, pos, out_dim, out_dim, pair, pair, pair,
           st.booleans())
    def depthwise(m, N, H, W, C, R, S, M, P, Q, stride, pad, dil, same):
        k = mods[m]
        pad = same_pad(pad, (R, S), dil, same)
        x, w, y = arr(N, H, W, C), arr(R, S, C, M), arr(N, P, Q, C * M)
        call("depthwise2d_forward", k.depthwise2d_forward, x, w, arr(C * M), y, stride, pad, dil)
        call("depthwise2d_backward", k.depthwise2d_backward, y, x, w, arr(N, H, W, C), arr(R, S, C, M),
             arr(C * M), stride, pad, dil)

    @cfg
    @given(st.sampled_from([0, 1]), small, pos, pos, pos, out_dim, out_dim, pair, pair, pair)
    def pool(m, N, H, W, C, P, Q, size, stride, pad):
        k = mods[m]
        x, y = arr(N, H, W, C), arr(N, P, Q, C)
        call("maxpool2d_forward", k.maxpool2d_forward, x, y, size, stride, pad)
        call("avgpool2d_forward", k.avgpool2d_forward, x, y, size, stride, pad)
        call("maxpool2d_backward", k.maxpool2d_backward, x, y, arr(N, H, W, C), size, stride, pad)
        call("avgpool2d_backward", k.avgpool2d_backward, y, arr(N, H, W, C), size, stride, pad)

    @cfg
    @given(st.sampled_from(["simple", "lstm", "gru"]), geom, geom, geom, geom)
    def rnn_sizes(cell, B, T, I, H):
        call("rnn_workspace_size", _cpu.rnn_workspace_size, cell, B, T, I, H)

    @settings(cfg, max_examples=min(40, int(os.environ["FUZZ_EXAMPLES"])))   # up to 1024 threads a call
    @given(geom)
    def threads(n):
        # Up to 1024 threads of 8 MB stacks: this one runs with a larger address-space limit.
        set_as(limit + (12 << 30))
        call("fma_peak_gflops", _cpu.fma_peak_gflops, n, 0.001)
        call("set_num_threads", _cpu.set_num_threads, n)
        _cpu.set_num_threads(2)

    @cfg
    @given(small, pos, pos, pos, pos, pos, pos, out_dim, out_dim, pair, pair, pair, st.booleans(), geom, geom, geom,
           st.sampled_from([0, 1, 2]))
    def capi(N, H, W, C, R, S, K, P, Q, stride, pad, dil, same, h_big, r_big, which_big, padding):
        # The C API: kilnet_conv2d_shape_init with any sizes, and the kernels with a shape whose
        # sizes match small buffers but whose geometry is anything.
        import ctypes
        L = ctypes.CDLL(os.environ["FUZZ_LIBKILNET"])
        I64 = ctypes.c_int64
        pad = same_pad(pad, (R, S), dil, same)
        init = [N, H, W, C, K, R, S, *stride, *dil]
        init[which_big % len(init)] = h_big
        print("kilnet_conv2d_shape_init", init, padding, file=sys.stderr, flush=True)
        shape = (I64 * 15)()
        L.kilnet_conv2d_shape_init(ctypes.byref(shape), *(I64(v) for v in init), padding)
        vals = [N, H, W, C, K, R, S, P, Q, *stride, *pad, *dil]
        shape = (I64 * 15)(*vals)
        x, w, y, b = arr(max(N, 1), H, W, C), arr(R, S, C, K), arr(max(N, 1), P, Q, K), arr(K)
        p = lambda a: a.ctypes.data_as(ctypes.c_void_p)
        print("kilnet_conv2d_forward/backward", vals, file=sys.stderr, flush=True)
        L.kilnet_conv2d_forward(ctypes.byref(shape), p(x), p(w), p(b), p(y))
        L.kilnet_conv2d_backward(ctypes.byref(shape), p(y), p(x), p(w), p(arr(*x.shape)), p(arr(*w.shape)), p(arr(K)))

    LAYERS = {   # name: (input shape without batch, constructor of one value)
        "conv2d_strides": ((6, 6, 2), lambda v, w: layers.Conv2D(2, 3, strides=v, padding=w)),
        "conv2d_dilation": ((6, 6, 2), lambda v, w: layers.Conv2D(2, 2, dilation_rate=v, padding=w)),
        "conv2d_kernel": ((6, 6, 2), lambda v, w: layers.Conv2D(2, v, padding=w)),
        "conv2d_filters": ((6, 6, 2), lambda v, w: layers.Conv2D(v, 2, padding=w)),
        "conv1d_dilation": ((6, 2), lambda v, w: layers.Conv1D(2, 2, dilation_rate=v,
                                                               padding="causal" if w == "valid" else w)),
        "conv1d_strides": ((6, 2), lambda v, w: layers.Conv1D(2, 3, strides=v, padding=w)),
        "convT_strides": ((3, 3, 2), lambda v, w: layers.Conv2DTranspose(2, 2, strides=v, padding=w)),
        "convT_dilation": ((3, 3, 2), lambda v, w: layers.Conv2DTranspose(2, 2, dilation_rate=v, padding=w)),
        "depthwise_dilation": ((6, 6, 2), lambda v, w: layers.DepthwiseConv2D(2, dilation_rate=v, padding=w)),
        "depthwise_multiplier": ((6, 6, 2), lambda v, w: layers.DepthwiseConv2D(2, depth_multiplier=v, padding=w)),
        "separable_dilation": ((6, 6, 2), lambda v, w: layers.SeparableConv2D(2, 2, dilation_rate=v, padding=w)),
        "maxpool_size": ((6, 6, 2), lambda v, w: layers.MaxPooling2D(pool_size=v, padding=w)),
        "avgpool_strides": ((6, 6, 2), lambda v, w: layers.AveragePooling2D(2, strides=v, padding=w)),
        "maxpool1d_size": ((6, 2), lambda v, w: layers.MaxPooling1D(pool_size=v, strides=1, padding=w)),
        "upsampling2d": ((6, 6, 2), lambda v, w: layers.UpSampling2D(size=v)),
        "zeropadding2d": ((6, 6, 2), lambda v, w: layers.ZeroPadding2D(padding=v)),
        "cropping2d": ((6, 6, 2), lambda v, w: layers.Cropping2D(cropping=v)),
        "dense_units": ((6,), lambda v, w: layers.Dense(v)),
        "embedding": ((6,), lambda v, w: layers.Embedding(v, 2)),
        "lstm_units": ((4, 3), lambda v, w: layers.LSTM(v)),
    }

    @cfg
    @given(st.sampled_from(sorted(LAYERS)), geom, st.sampled_from(["valid", "same"]))
    def layer_ctors(kind, v, pad):
        import kilnet
        shape, make = LAYERS[kind]
        print("layer", kind, v, pad, file=sys.stderr, flush=True)
        try:
            layer = make(v, pad)
            m = kilnet.models.Sequential([kilnet.Input(shape), layer])
            x = np.ones((1, *shape), np.float32) if kind != "embedding" else np.zeros((1, *shape), np.int32)
            m.predict(x, verbose=0)
        except (ValueError, TypeError, MemoryError):
            # MemoryError: a layer whose weights or output cannot fit (Dense(2**40)) when built
            # directly; loading a file refuses those before allocating (test_hardening_files).
            pass

    for t in sys.argv[1:]:
        globals()[t]()
    print("FUZZ-OK", file=sys.stderr, flush=True)
""").replace("BIG_VALUES", repr(BIG))


def run_fuzz(tests, examples=int(os.environ.get("KILNET_FUZZ_EXAMPLES", "150")), as_bytes=4 << 30, env=None):
    env = {**os.environ, **(env or {}), "FUZZ_EXAMPLES": str(examples), "FUZZ_AS_BYTES": str(as_bytes),
           "OMP_NUM_THREADS": "2", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", FUZZ, *tests], capture_output=True, text=True, env=env,
                         timeout=300)
    last = [ln for ln in out.stderr.splitlines() if ln.strip()][-12:]
    assert out.returncode == 0 and "FUZZ-OK" in out.stderr, (
        f"fuzz of {tests} ended with status {out.returncode}; last lines:\n" + "\n".join(last))


@pytest.mark.parametrize("tests", [["conv"], ["depthwise", "pool"], ["rnn_sizes", "threads"], ["layer_ctors"]])
def test_kernel_geometry_fuzz(tests):
    pytest.importorskip("hypothesis")
    run_fuzz(tests)


def _libkilnet():
    """The C API library of this checkout's build (build/dev) or of the installed package."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for cand in (os.path.join(root, "build", "dev", "libkilnet.so"),
                 os.path.join(os.path.dirname(kilnet.__file__), "lib", "libkilnet.so")):
        if os.path.exists(cand):
            return cand
    return None


def test_c_api_geometry_fuzz():
    pytest.importorskip("hypothesis")
    lib = _libkilnet()
    if lib is None:
        pytest.skip("no libkilnet.so built (bash .ci/dev_build.sh builds build/dev/libkilnet.so)")
    run_fuzz(["capi"], env={"FUZZ_LIBKILNET": lib})


# ------------------------------------------------------------------ the kernels, directly
def _a(*shape):
    return np.ones(shape, np.float32)


@pytest.mark.parametrize("mod", [_cpu, _cpu.ref])
@pytest.mark.parametrize("stride, pad, dil, y, word", [
    ((1, 1), (2**39, 2**39), (2**40, 2**40), (1, 6, 6, 1), "'dilation'"),
    ((1, 1), (2**31, 2**31), (1, 1), (1, 6, 6, 1), "'padding'"),
    ((2**62, 1), (0, 0), (1, 1), (1, 1, 5, 1), "'strides'"),
    ((1, 1), (2**20, 2**20), (2**21, 2**21), (1, 6, 6, 1), "padded image"),
    ((1, 1), (-1, 0), (1, 1), (1, 6, 6, 1), "'padding'"),
    ((1, 1), (0, 0), (1, 1), (1, 7, 6, 1), "output must have shape"),
])
def test_conv2d_geometry_refused_before_allocating(mod, stride, pad, dil, y, word):
    x, w = _a(1, 6, 6, 1), _a(2, 2, 1, 1)
    with pytest.raises(ValueError, match=word):
        mod.conv2d_forward(x, w, None, _a(*y), stride, pad, dil)
    with pytest.raises(ValueError, match=word):
        mod.conv2d_backward(_a(*y), x, w, _a(1, 6, 6, 1), _a(2, 2, 1, 1), None, stride, pad, dil)
    with pytest.raises(ValueError, match=word):
        mod.conv2d_backward_input(_a(*y), w, _a(1, 6, 6, 1), stride, pad, dil)
    with pytest.raises(ValueError, match=word):
        mod.depthwise2d_forward(x, w, None, _a(*y), stride, pad, dil)


def test_pool_and_thread_arguments_refused():
    x = _a(1, 6, 6, 1)
    with pytest.raises(ValueError, match="'pool_size'"):
        _cpu.maxpool2d_backward(x, _a(1, 1, 1, 1), _a(1, 6, 6, 1), (2**20, 2**20), (1, 1), (0, 0))
    with pytest.raises(ValueError, match="'strides'"):
        _cpu.avgpool2d_forward(x, _a(1, 1, 1, 1), (2, 2), (2**31, 1))
    with pytest.raises(ValueError, match="threads"):
        _cpu.fma_peak_gflops(200000)
    with pytest.raises(ValueError, match="set_num_threads"):
        _cpu.set_num_threads(200000)
    with pytest.raises(ValueError, match="overflows"):
        _cpu.rnn_workspace_size("lstm", 2**40, 2**40, 4, 4)
    assert _cpu.rnn_workspace_size("lstm", 2, 3, 4, 5)[0] > 0


# ------------------------------------------------------------------ layers
def test_issue_repro_dilated_same_conv_raises_instead_of_aborting():
    """Issue 22's reproducer ended in std::bad_alloc (exit 134); now a ValueError at construction,
    and a dilation that fits int32 but pads a 6x6 image to 2**30 rows is refused at build."""
    code = ("import numpy as np\n"
            "from kilnet.models import Sequential\nfrom kilnet.layers import Conv2D\n"
            "for d in (2**40, 2**30):\n"
            "    try:\n"
            "        Sequential([Conv2D(1, 2, dilation_rate=d, padding='same', input_shape=(6, 6, 1))]).predict(\n"
            "            np.ones((1, 6, 6, 1), np.float32), verbose=0)\n"
            "    except ValueError as e:\n"
            "        print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("refused:") == 2 and "dilation_rate" in out.stdout and "padded image" in out.stdout


@pytest.mark.parametrize("make", [
    lambda: layers.Conv2D(1, 2, dilation_rate=2**20, padding="same"),
    lambda: layers.Conv1D(1, 2, dilation_rate=2**30, padding="causal"),
    lambda: layers.DepthwiseConv2D(2, dilation_rate=2**22, padding="same"),
    lambda: layers.SeparableConv2D(1, 2, dilation_rate=2**22, padding="same"),
    lambda: layers.Conv2DTranspose(1, 2, dilation_rate=2**22, padding="same"),
    lambda: layers.MaxPooling2D(pool_size=2**16, padding="same"),
])
def test_layers_refuse_at_build_what_the_kernels_refuse(make):
    layer = make()
    shape = (None, 6, 1) if type(layer).__name__.endswith("1D") else (None, 6, 6, 1)
    with pytest.raises(ValueError, match=type(layer).__name__):
        kilnet.models.Sequential([kilnet.Input(shape[1:]), layer])


@pytest.mark.parametrize("bad", [2**31, 2**63, -1, 0, 2.5, "3", True, float("nan"), float("inf"), (1, 2**40)])
def test_layer_constructors_refuse_extreme_geometry(bad):
    for make in (lambda v: layers.Conv2D(1, 3, strides=v), lambda v: layers.Conv2D(1, 3, dilation_rate=v),
                 lambda v: layers.Conv2D(1, v), lambda v: layers.MaxPooling2D(pool_size=v),
                 lambda v: layers.Conv1D(1, v), lambda v: layers.UpSampling2D(size=v)):
        with pytest.raises((ValueError, TypeError)):
            make(bad)
    layers.Conv2D(1, 3, strides=3.0)   # an integral float (a JSON config) is an int


def test_c_api_geometry_status_codes():
    import ctypes
    lib = _libkilnet()
    if lib is None:
        pytest.skip("no libkilnet.so built")
    L = ctypes.CDLL(lib)
    L.kilnet_last_error.restype = ctypes.c_char_p
    x, w, y = _a(1, 6, 6, 1), _a(2, 2, 1, 1), _a(1, 6, 6, 1)
    p = lambda a: a.ctypes.data_as(ctypes.c_void_p)   # noqa: E731
    # N H W C K R S P Q stride_h stride_w pad_h pad_w dil_h dil_w
    cases = [((1, 6, 6, 1, 1, 2, 2, 6, 6, 1, 1, 2**39, 2**39, 2**40, 2**40), 2, "'dilation'"),
             ((1, 6, 6, 1, 1, 2, 2, 6, 6, 1, 1, 2**20, 2**20, 2**21, 2**21), 2, "padded image"),
             ((1, 6, 6, 1, 1, 2, 2, 6, 6, 2**62, 1, 0, 0, 1, 1), 2, "'strides'"),
             ((1, 6, 6, 1, 1, 2, 2, 6, 7, 1, 1, 0, 0, 1, 1), 3, "output must have shape")]
    for vals, status, word in cases:
        shape = (ctypes.c_int64 * 15)(*vals)
        y[...] = 7.0
        assert L.kilnet_conv2d_forward(ctypes.byref(shape), p(x), p(w), None, p(y)) == status, vals
        assert word in L.kilnet_last_error().decode(), L.kilnet_last_error()
        assert (y == 7.0).all()
    shape = (ctypes.c_int64 * 15)()
    I64 = ctypes.c_int64
    rc = L.kilnet_conv2d_shape_init(ctypes.byref(shape), *(I64(v) for v in (1, 6, 6, 1, 1, 2, 2, 1, 1, 2**40, 2**40)), 1)
    assert rc == 2 and b"dilation" in L.kilnet_last_error()
