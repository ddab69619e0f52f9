"""The fused Conv2D -> Flatten -> Dense kernel (kilnet/conv_dense.h) and the trainer's use of it:
the kernel against the reference composition, the unfused fast kernels and PyTorch (float64
autograd) on odd shapes and geometries at 1 and 2 threads; its gradients against central
differences of its own forward; bad arguments; models trained with and without the fusion
reaching the same weights, and the cases where it must not run."""
import numpy as np
import pytest

import kilnet
from kilnet import _cpu, layers
from kilnet.engine import fusion
from kilnet.layers import conv_dense

# (N, H, W, C, K, R, S, U, strides, padding, dilation, act)
CASES = [
    (32, 28, 28, 1, 32, 3, 3, 10, (1, 1), "valid", (1, 1), "relu"),     # the canonical CNN
    (5, 13, 11, 3, 7, 3, 2, 3, (1, 1), "valid", (1, 1), "relu"),
    (7, 17, 9, 4, 20, 3, 3, 5, (2, 2), "same", (1, 1), "tanh"),
    (3, 12, 12, 2, 16, 3, 3, 4, (1, 1), "same", (1, 1), "linear"),
    (2, 20, 15, 3, 5, 3, 3, 2, (1, 1), "valid", (2, 2), "sigmoid"),
    (300, 9, 9, 2, 33, 3, 3, 11, (1, 1), "valid", (1, 1), "relu"),      # big batch: one row a block
    (1, 30, 4, 1, 3, 5, 1, 1, (1, 1), "valid", (1, 1), "relu"),
    (4, 11, 10, 5, 17, 1, 1, 3, (3, 2), "valid", (1, 1), "relu"),
]
# Shapes the pixel path takes (AVX-512, K 16 or 32, U <= 16, R*S*C <= 64, ReLU or linear): odd
# batches (the backward's 4-image and the forward's 16-image groups' remainders), every
# padding/stride/dilation, 64 taps, U 1/16, 3x3 windows of one channel (the forward's taps in
# registers) next to padded edges.
PIXEL_CASES = [
    (37, 12, 11, 3, 32, 3, 3, 16, (2, 1), "same", (1, 2), "relu"),
    (1, 9, 10, 1, 16, 2, 3, 1, (1, 1), "same", (1, 1), "linear"),
    (6, 10, 9, 4, 32, 4, 4, 7, (1, 1), "valid", (1, 1), "relu"),        # 64 taps
    (11, 7, 8, 2, 16, 3, 3, 10, (2, 2), "same", (2, 1), "relu"),
    (19, 8, 9, 1, 32, 3, 3, 13, (1, 1), "same", (1, 1), "linear"),
]


def _geometry(H, W, R, S, strides, padding, dil):
    out, pad = [], []
    for size, k, s, d in ((H, R, strides[0], dil[0]), (W, S, strides[1], dil[1])):
        eff = (k - 1) * d + 1
        if padding == "valid":
            out.append((size - eff) // s + 1)
            pad.append(0)
        else:
            o = -(-size // s)
            out.append(o)
            pad.append(max((o - 1) * s + eff - size, 0) // 2)
    return tuple(out), tuple(pad)


def _arrays(case, seed=0):
    N, H, W, C, K, R, S, U, strides, padding, dil, act = case
    rng = np.random.default_rng(seed)
    (P, Q), pad = _geometry(H, W, R, S, strides, padding, dil)
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    wc = (rng.standard_normal((R, S, C, K)) * 0.3).astype(np.float32)
    bc = (rng.standard_normal(K) * 0.1).astype(np.float32)
    wd = (rng.standard_normal((P * Q * K, U)) * 0.05).astype(np.float32)
    bd = rng.standard_normal(U).astype(np.float32)
    dz = rng.standard_normal((N, U)).astype(np.float32)
    geo = (strides, pad, dil, (P, Q), act)
    return x, wc, bc, wd, bd, dz, geo


def _run(mod, x, wc, bc, wd, bd, dz, geo, overwrite=True):
    z = np.empty((x.shape[0], wd.shape[1]), np.float32)
    mod.conv_dense_forward(x, wc, bc, wd, bd, z, *geo)
    dwc, dbc = np.full_like(wc, 0.5), np.full_like(bc, -0.25)   # accumulated into
    dwd = np.full_like(wd, np.nan if overwrite else 1.0)         # overwritten (NaN must go)
    dbd = np.full_like(bd, 2.0)
    mod.conv_dense_backward(x, wc, bc, wd, dz, dwc, dbc, dwd, dbd, *geo, overwrite)
    return z, dwc, dbc, dwd, dbd


def _close(a, b, tol=2e-5):
    scale = float(np.abs(b).max()) + 1e-6
    assert float(np.abs(a - b).max()) <= tol * scale, (float(np.abs(a - b).max()), scale)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    old = _cpu.get_num_threads()
    _cpu.set_num_threads(request.param)
    yield request.param
    _cpu.set_num_threads(old)


@pytest.mark.parametrize("case", CASES + PIXEL_CASES,
                         ids=[f"case{i}" for i in range(len(CASES))] + [f"pixel{i}" for i in range(len(PIXEL_CASES))])
def test_kernel_matches_reference_and_unfused(case, threads):
    x, wc, bc, wd, bd, dz, geo = _arrays(case)
    fast = _run(_cpu, x, wc, bc, wd, bd, dz, geo)
    ref = _run(_cpu.ref, x, wc, bc, wd, bd, dz, geo)
    for a, b in zip(fast, ref):
        _close(a, b)
    # the unfused fast kernels the layers would run
    strides, pad, dil, (P, Q), act = geo
    N, K = x.shape[0], wc.shape[3]
    h = np.empty((N, P, Q, K), np.float32)
    _cpu.conv2d_forward(x, wc, bc, h, strides, pad, dil, act)
    _close(fast[0], h.reshape(N, -1) @ wd + bd)
    dh = (dz @ wd.T).reshape(h.shape).astype(np.float32)
    dwc, dbc = np.full_like(wc, 0.5), np.full_like(bc, -0.25)
    _cpu.conv2d_backward(dh, x, wc, None, dwc, dbc, strides, pad, dil, act, h)
    _close(fast[1], dwc)
    _close(fast[2], dbc)
    _close(fast[3], h.reshape(N, -1).T @ dz)
    _close(fast[4], 2.0 + dz.sum(0))


def test_accumulates_into_dwd_without_overwrite():
    x, wc, bc, wd, bd, dz, geo = _arrays(CASES[1])
    _, _, _, dwd, _ = _run(_cpu, x, wc, bc, wd, bd, dz, geo, overwrite=False)
    _, _, _, dwd0, _ = _run(_cpu, x, wc, bc, wd, bd, dz, geo, overwrite=True)
    _close(dwd, dwd0 + 1.0)


def test_no_biases():
    x, wc, bc, wd, bd, dz, geo = _arrays(CASES[2])
    z = np.empty((x.shape[0], wd.shape[1]), np.float32)
    zr = np.empty_like(z)
    _cpu.conv_dense_forward(x, wc, None, wd, None, z, *geo)
    _cpu.ref.conv_dense_forward(x, wc, None, wd, None, zr, *geo)
    _close(z, zr)
    out = []
    for mod in (_cpu, _cpu.ref):
        dwc, dwd = np.zeros_like(wc), np.zeros_like(wd)
        mod.conv_dense_backward(x, wc, None, wd, dz, dwc, None, dwd, None, *geo, True)
        out.append((dwc, dwd))
    _close(out[0][0], out[1][0])
    _close(out[0][1], out[1][1])


@pytest.mark.parametrize("threads_n", [2])
def test_deterministic_for_a_thread_count(threads_n):
    old = _cpu.get_num_threads()
    _cpu.set_num_threads(threads_n)
    try:
        x, wc, bc, wd, bd, dz, geo = _arrays(CASES[0], seed=3)
        a = _run(_cpu, x, wc, bc, wd, bd, dz, geo)
        b = _run(_cpu, x, wc, bc, wd, bd, dz, geo)
        for u, v in zip(a, b):
            assert np.array_equal(u, v)
    finally:
        _cpu.set_num_threads(old)


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[4], PIXEL_CASES[0], PIXEL_CASES[3]],
                         ids=["valid", "same-stride2", "dilated", "pixel-same-stride-dilated", "pixel-k16"])
def test_gradients_against_torch_float64(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, wc, bc, wd, bd, dz, geo = _arrays(case, seed=5)
    strides, pad, dil, (P, Q), act = geo
    z, dwc, dbc, dwd, dbd = _run(_cpu, x, wc, bc, wd, bd, dz, geo)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k != "x")
         for k, v in dict(x=x, wc=wc, bc=bc, wd=wd, bd=bd).items()}
    xt = t["x"].permute(0, 3, 1, 2)
    H, W = x.shape[1:3]
    R, S = wc.shape[:2]
    # torch pads symmetrically: pad explicitly, top/left as given, bottom/right what P, Q need
    bottom = max((P - 1) * strides[0] + (R - 1) * dil[0] + 1 - H - pad[0], 0)
    right = max((Q - 1) * strides[1] + (S - 1) * dil[1] + 1 - W - pad[1], 0)
    xt = F.pad(xt, (pad[1], right, pad[0], bottom))
    h = F.conv2d(xt, t["wc"].permute(3, 2, 0, 1), t["bc"], stride=strides, dilation=dil)
    h = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "linear": lambda v: v}[act](h)
    zt = h.permute(0, 2, 3, 1).reshape(x.shape[0], -1) @ t["wd"] + t["bd"]
    (zt * torch.tensor(dz, dtype=torch.float64)).sum().backward()
    _close(z, zt.detach().numpy(), 1e-5)
    _close(dwc - 0.5, t["wc"].grad.numpy(), 1e-4)
    _close(dbc + 0.25, t["bc"].grad.numpy(), 1e-4)
    _close(dwd, t["wd"].grad.numpy(), 1e-4)
    _close(dbd - 2.0, t["bd"].grad.numpy(), 1e-4)


@pytest.mark.parametrize("case", [CASES[0]] + PIXEL_CASES, ids=["canonical"] + [f"pixel{i}" for i in range(len(PIXEL_CASES))])
def test_pixel_path_equals_block_path(case, threads, monkeypatch):
    """The pixel path (where the machine has AVX-512) against the block path forced with
    KILNET_CONV_DENSE_PATH=blocks, including gradients accumulated into existing values."""
    x, wc, bc, wd, bd, dz, geo = _arrays(case, seed=11)
    for overwrite in (True, False):
        a = _run(_cpu, x, wc, bc, wd, bd, dz, geo, overwrite)
        monkeypatch.setenv("KILNET_CONV_DENSE_PATH", "blocks")
        b = _run(_cpu, x, wc, bc, wd, bd, dz, geo, overwrite)
        monkeypatch.delenv("KILNET_CONV_DENSE_PATH")
        for u, v in zip(a, b):
            _close(u, v)


def test_pixel_path_keeps_nan_and_masks_relu():
    """A NaN input reaches the logits (ReLU keeps NaN), and the ReLU gradient is zero where the
    activation is not positive, as in the unfused kernels."""
    x, wc, bc, wd, bd, dz, geo = _arrays(CASES[0], seed=2)
    x[3, 5, 5, 0] = np.nan
    z = np.empty((x.shape[0], wd.shape[1]), np.float32)
    _cpu.conv_dense_forward(x, wc, bc, wd, bd, z, *geo)
    assert np.isnan(z[3]).all() and np.isfinite(np.delete(z, 3, axis=0)).all()
    x[3, 5, 5, 0] = 0.0
    wc[...] = -np.abs(wc)            # with x >= 0 and a negative bias every activation is <= 0
    bc[...] = -1.0
    x[...] = np.abs(x)
    dwc, dbc, dwd = np.zeros_like(wc), np.zeros_like(bc), np.zeros_like(wd)
    _cpu.conv_dense_backward(x, wc, bc, wd, dz, dwc, dbc, dwd, None, *geo, True)
    assert not dwc.any() and not dbc.any() and not dwd.any()


# ------------------------------------------------------------------------------ DP-SGD's passes
def _per_example(mod, x, wc, bc, wd, dz, geo):
    n = x.shape[0]
    per = np.full((n, wc.size + (wc.shape[3] if bc is not None else 0)), np.nan, np.float32)
    hsq = np.full(n, np.nan, np.float32)
    mod.conv_dense_per_example(x, wc, bc, wd, dz, per, hsq, *geo)
    return per, hsq


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES + PIXEL_CASES,
                         ids=[f"case{i}" for i in range(len(CASES))] + [f"pixel{i}" for i in range(len(PIXEL_CASES))])
def test_per_example_pass_is_each_example_alone(case, bias, threads):
    """conv_dense_per_example: row n is the convolution's gradient of example n as a batch of
    one through the fused backward, and hsq[n] |dz_n|^2 that batch's Dense kernel gradient's
    squared norm (h_n^T dz_n has norm |h_n| |dz_n|); the reference composition agrees."""
    x, wc, bc, wd, bd, dz, geo = _arrays(case)
    bc = bc if bias else None
    per, hsq = _per_example(_cpu, x, wc, bc, wd, dz, geo)
    rper, rhsq = _per_example(_cpu.ref, x, wc, bc, wd, dz, geo)
    _close(per, rper)
    _close(hsq, rhsq, tol=1e-5)
    n = x.shape[0]
    for i in sorted({0, n // 2, n - 1}):
        dwc, dwd = np.zeros_like(wc), np.empty_like(wd)
        dbc = None if bc is None else np.zeros_like(bc)
        _cpu.conv_dense_backward(x[i:i + 1], wc, bc, wd, dz[i:i + 1], dwc, dbc, dwd, None, *geo, True)
        _close(per[i], np.concatenate([dwc.ravel()] + ([] if dbc is None else [dbc])))
        want = float((dwd.astype(np.float64) ** 2).sum() / (dz[i].astype(np.float64) ** 2).sum())
        assert abs(float(hsq[i]) - want) <= 1e-4 * max(want, 1e-6), (i, float(hsq[i]), want)


def test_per_example_pass_general_path_and_relu_mask(monkeypatch):
    """The general kernels (KILNET_CONV_DENSE_PATH=blocks) give what the AVX-512 pass gives, and a
    ReLU that is never positive leaves every per-example gradient zero."""
    for case in (CASES[0], PIXEL_CASES[0], PIXEL_CASES[2]):
        x, wc, bc, wd, bd, dz, geo = _arrays(case, seed=4)
        fast = _per_example(_cpu, x, wc, bc, wd, dz, geo)
        monkeypatch.setenv("KILNET_CONV_DENSE_PATH", "blocks")
        slow = _per_example(_cpu, x, wc, bc, wd, dz, geo)
        monkeypatch.delenv("KILNET_CONV_DENSE_PATH")
        _close(fast[0], slow[0])
        _close(fast[1], slow[1], tol=1e-5)
    x, wc, bc, wd, bd, dz, geo = _arrays(CASES[0], seed=2)
    x, wc, bc[...] = np.abs(x), -np.abs(wc), -1.0
    per, hsq = _per_example(_cpu, x, wc, bc, wd, dz, geo)
    assert not per.any() and not hsq.any()


@pytest.mark.parametrize("case", [CASES[0], CASES[2], PIXEL_CASES[0], PIXEL_CASES[3]],
                         ids=["canonical", "same-stride2", "pixel-same-stride-dilated", "pixel-k16"])
def test_dense_gradients_alone(case, threads):
    """dwc None: the Dense's gradients only (DP-SGD's clipped sum of them), the same values as the
    full backward's."""
    x, wc, bc, wd, bd, dz, geo = _arrays(case)
    _, _, _, dwd_full, dbd_full = _run(_cpu, x, wc, bc, wd, bd, dz, geo)
    for mod in (_cpu, _cpu.ref):
        dwd, dbd = np.full_like(wd, np.nan), np.full_like(bd, 2.0)
        mod.conv_dense_backward(x, wc, bc, wd, dz, None, None, dwd, dbd, *geo, True)
        _close(dwd, dwd_full)
        _close(dbd, dbd_full)


def test_per_example_direct_says_where_the_one_pass_kernel_runs(monkeypatch):
    avx512 = _cpu.simd_level() == "avx512"
    assert _cpu.conv_dense_per_example_direct(9, 10, "relu") == avx512
    assert _cpu.conv_dense_per_example_direct(256, 16, "linear") == avx512
    assert not _cpu.conv_dense_per_example_direct(257, 10, "relu")     # more taps than it takes
    assert not _cpu.conv_dense_per_example_direct(9, 17, "relu")       # more units than registers
    assert not _cpu.conv_dense_per_example_direct(9, 10, "tanh")
    assert not _cpu.ref.conv_dense_per_example_direct(9, 10, "relu")
    monkeypatch.setenv("KILNET_CONV_DENSE_PATH", "blocks")
    assert not _cpu.conv_dense_per_example_direct(9, 10, "relu")
    with pytest.raises(ValueError, match="taps"):
        _cpu.conv_dense_per_example_direct(0, 10, "relu")
    with pytest.raises(ValueError, match="unknown activation"):
        _cpu.conv_dense_per_example_direct(9, 10, "softmax")


def test_per_example_bad_arguments():
    x, wc, bc, wd, bd, dz, geo = _arrays(CASES[1])
    per, hsq = _per_example(_cpu, x, wc, bc, wd, dz, geo)
    with pytest.raises(ValueError, match="'per'"):
        _cpu.conv_dense_per_example(x, wc, bc, wd, dz, per[:, :-1], hsq, *geo)
    with pytest.raises(ValueError, match="'hsq'"):
        _cpu.conv_dense_per_example(x, wc, bc, wd, dz, per, hsq[:-1], *geo)
    with pytest.raises(ValueError, match="dz"):
        _cpu.conv_dense_per_example(x, wc, bc, wd, dz[:-1], per, hsq, *geo)
    with pytest.raises(ValueError, match="overlap"):
        _cpu.conv_dense_per_example(x, wc, bc, wd, dz, per, per.reshape(-1)[:x.shape[0]], *geo)
    with pytest.raises(ValueError, match="dbc without dwc"):
        _cpu.conv_dense_backward(x, wc, bc, wd, dz, None, np.zeros_like(bc), np.zeros_like(wd), None, *geo, True)


def test_gradients_against_finite_differences():
    """Central differences of the kernel's own forward (float32, so a few coordinates and a loose
    tolerance; the float64 check is the torch test above)."""
    case = (3, 8, 7, 2, 4, 3, 3, 3, (1, 1), "valid", (1, 1), "tanh")
    x, wc, bc, wd, bd, dz, geo = _arrays(case, seed=7)

    def loss(wc_, bc_, wd_, bd_):
        z = np.empty((x.shape[0], wd.shape[1]), np.float32)
        _cpu.conv_dense_forward(x, wc_, bc_, wd_, bd_, z, *geo)
        return float((z.astype(np.float64) * dz).sum())
    _, dwc, dbc, dwd, dbd = _run(_cpu, x, wc, bc, wd, bd, dz, geo)
    grads = {"wc": dwc - 0.5, "bc": dbc + 0.25, "wd": dwd, "bd": dbd - 2.0}
    params = {"wc": wc, "bc": bc, "wd": wd, "bd": bd}
    rng = np.random.default_rng(0)
    eps = 1e-2
    for name, p in params.items():
        for flat in rng.choice(p.size, size=min(6, p.size), replace=False):
            idx = np.unravel_index(flat, p.shape)
            plus, minus = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (loss(**{k + "_": v for k, v in plus.items()}) - loss(**{k + "_": v for k, v in minus.items()})) / (2 * eps)
            assert abs(fd - grads[name][idx]) <= 2e-2 * max(1.0, abs(fd)), (name, idx, fd, grads[name][idx])


def test_bad_arguments_name_the_problem():
    x, wc, bc, wd, bd, dz, geo = _arrays(CASES[1])
    z = np.empty((x.shape[0], wd.shape[1]), np.float32)
    strides, pad, dil, (P, Q), act = geo
    with pytest.raises(ValueError, match="wd"):
        _cpu.conv_dense_forward(x, wc, bc, wd[:-1], bd, z, *geo)
    with pytest.raises(ValueError, match="'z'"):
        _cpu.conv_dense_forward(x, wc, bc, wd, bd, z[:-1], *geo)
    with pytest.raises(ValueError, match="bd"):
        _cpu.conv_dense_forward(x, wc, bc, wd, bd[:-1], z, *geo)
    with pytest.raises(ValueError, match="conv_dense_forward"):   # an output the input cannot make
        _cpu.conv_dense_forward(x, wc, bc, wd, bd, z, strides, pad, dil, (P + 5, Q), act)
    with pytest.raises(ValueError, match="unknown activation"):
        _cpu.conv_dense_forward(x, wc, bc, wd, bd, z, strides, pad, dil, (P, Q), "softmax")
    with pytest.raises(TypeError, match="float32"):
        _cpu.conv_dense_forward(x.astype(np.float64), wc, bc, wd, bd, z, *geo)
    dwc, dwd = np.zeros_like(wc), np.zeros_like(wd)
    with pytest.raises(ValueError, match="overlap"):
        _cpu.conv_dense_backward(x, wc, bc, wd, dz, dwc, None, wd, None, *geo, True)
    with pytest.raises(ValueError, match="dz"):
        _cpu.conv_dense_backward(x, wc, bc, wd, dz[:, :-1], dwc, None, dwd, None, *geo, True)


# ------------------------------------------------------------------------------ in the trainer
def _count_groups(monkeypatch):
    calls = []
    real = conv_dense.call_group

    def counting(*args):
        calls.append(args[0].name)
        return real(*args)
    monkeypatch.setattr(conv_dense, "call_group", counting)
    return calls


def _cnn(kind, padding="valid", strides=1, dense_act="softmax", conv_act="relu"):
    kilnet.utils.set_random_seed(0)
    if kind == "sequential":
        m = kilnet.Sequential([kilnet.Input((14, 13, 2)), layers.Conv2D(6, 3, strides=strides, padding=padding,
                                                                          activation=conv_act),
                               layers.Flatten(), layers.Dense(5, activation=dense_act)])
    else:
        i = kilnet.Input((14, 13, 2))
        h = layers.Conv2D(6, 3, strides=strides, padding=padding, activation=conv_act)(i)
        m = kilnet.Model(i, layers.Dense(5, activation=dense_act)(layers.Flatten()(h)))
    loss = "sparse_categorical_crossentropy" if dense_act == "softmax" else "mse"
    m.compile(optimizer="adam", loss=loss)
    return m


def _data(n=70):
    rng = np.random.default_rng(1)
    return rng.random((n, 14, 13, 2)).astype(np.float32), rng.integers(0, 5, n)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@pytest.mark.parametrize("geometry", [("valid", 1), ("same", 2)], ids=["valid", "same-stride2"])
def test_training_with_and_without_fusion_agrees(kind, geometry, monkeypatch):
    x, y = _data()   # 70 samples: the last batch of 32 is partial
    fused = _cnn(kind, *geometry)
    calls = _count_groups(monkeypatch)
    h1 = fused.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    assert len(calls) == 6   # 3 steps an epoch, 2 epochs
    monkeypatch.setattr(fusion, "allowed", lambda: False)
    plain = _cnn(kind, *geometry)
    h2 = plain.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    assert len(calls) == 6
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-5)
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_linear_head_and_mse(monkeypatch):
    x, y = _data()
    target = np.eye(5, dtype=np.float32)[y]
    m = _cnn("sequential", dense_act="linear", conv_act="tanh")
    calls = _count_groups(monkeypatch)
    m.fit(x, target, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert calls
    monkeypatch.setattr(fusion, "allowed", lambda: False)
    p = _cnn("sequential", dense_act="linear", conv_act="tanh")
    p.fit(x, target, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(m.get_weights(), p.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_not_fused_where_it_must_not_be(monkeypatch):
    calls = _count_groups(monkeypatch)
    x, y = _data(40)
    # the conv's input needs a gradient (a Dense before it): the unfused kernels give dx
    m = kilnet.Sequential([kilnet.Input((14, 13, 2)), layers.Dense(2), layers.Conv2D(4, 3, activation="relu"),
                           layers.Flatten(), layers.Dense(5, activation="softmax")])
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    m.fit(x, y, epochs=1, verbose=0)
    # a frozen convolution
    f = _cnn("sequential")
    f.layers[0].trainable = False
    f.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = f.layers[0].get_weights()[0].copy()
    f.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(before, f.layers[0].get_weights()[0])
    # the conv's output is also a model output
    i = kilnet.Input((14, 13, 2))
    h = layers.Conv2D(4, 3, activation="relu")(i)
    two = kilnet.Model(i, [layers.Dense(5, activation="softmax")(layers.Flatten()(h)), h])
    two.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy", "mse"])
    two.fit(x, [y, np.zeros((40, 12, 11, 4), np.float32)], epochs=1, verbose=0)
    # a user's GradientTape: the tensors in between stay on the tape
    g = _cnn("functional")
    with kilnet.GradientTape() as tape:
        out = g(x[:8], training=True)
        loss = kilnet.ops.mean(out)
    grads = tape.gradient(loss, g.trainable_variables)
    assert all(v is not None for v in grads)
    assert calls == []


def test_kilnet_fusion_0_turns_it_off(tmp_path):
    import subprocess
    import sys
    code = ("import kilnet, numpy as np\n"
            "from kilnet.engine import fusion\n"
            "with fusion.allowing(True):\n"
            "    print(fusion.allowed())\n")
    env = dict(__import__("os").environ, KILNET_FUSION="0")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
