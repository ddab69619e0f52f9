"""Recurrent layers: SimpleRNN, LSTM and GRU kernels (fast vs reference, finite-difference
gradient checks through time), the layers (gradients, Keras configs and weight layouts, save/load,
stacking, TimeDistributed), PyTorch parity on outputs and every gradient, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HAVE_TORCH, assert_grad_close, numeric_grad, rand
import kilnet
from kilnet import _cpu
from kilnet.layers import GRU, LSTM, Dense, SimpleRNN, TimeDistributed
from kilnet.models import Sequential, load_model
from kilnet.utils import set_random_seed

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
CELLS = list(GATES)
LAYERS = {"simple_rnn": SimpleRNN, "lstm": LSTM, "gru": GRU}


# ---------------------------------------------------------------------------------- kernel helpers
def problem(cell, B, T, I, H, seed=0, scale=0.5, states=False):
    r = np.random.default_rng(seed)
    g = GATES[cell] * H
    p = {"x": rand(r, B, T, I), "w": rand(r, I, g, lo=-scale, hi=scale), "u": rand(r, H, g, lo=-scale, hi=scale),
         "b": rand(r, *((2, g) if cell == "gru" else (g,)), lo=-scale, hi=scale), "h0": None, "c0": None}
    if states:
        p["h0"] = rand(r, B, H)
        if cell == "lstm":
            p["c0"] = rand(r, B, H)
    return p


def k_forward(mod, cell, p, seq, back=False, act="tanh", rec="sigmoid"):
    B, T, I = p["x"].shape
    H = p["u"].shape[0]
    ws_n, _ = mod.rnn_workspace_size(cell, B, T, I, H)
    ws = np.full(ws_n, np.nan, np.float32)
    y = np.full((B, T, H) if seq else (B, H), np.nan, np.float32)
    mod.rnn_forward(cell, p["x"], p["w"], p["u"], p["b"], y, ws, p["h0"], p["c0"], act, rec, back)
    return y, ws


def k_backward(mod, cell, p, ws, dy, back=False, act="tanh", rec="sigmoid"):
    B, T, I = p["x"].shape
    H = p["u"].shape[0]
    _, sc_n = mod.rnn_workspace_size(cell, B, T, I, H)
    g = {"x": np.full_like(p["x"], np.nan), "w": np.zeros_like(p["w"]), "u": np.zeros_like(p["u"]),
         "b": None if p["b"] is None else np.zeros_like(p["b"])}
    g["h0"] = np.full((B, H), np.nan, np.float32) if p["h0"] is not None else None
    g["c0"] = np.full((B, H), np.nan, np.float32) if p["c0"] is not None else None
    mod.rnn_backward(cell, dy, p["x"], p["w"], p["u"], ws, np.full(sc_n, np.nan, np.float32), g["x"], g["w"],
                     g["u"], g["b"], g["h0"], g["c0"], act, rec, back)
    return {k: v for k, v in g.items() if v is not None}


# ---------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B,T,I,H", [(1, 1, 1, 1), (3, 5, 7, 9), (13, 17, 5, 33), (8, 3, 16, 16), (7, 4, 3, 24),
                                     (5, 1, 9, 13), (2, 2, 12, 20)])
def test_fast_matches_reference(cell, B, T, I, H):
    """Fast vs naive kernels on odd sizes (row blocks, vector tails, T = 1 where the first step's
    product has no h_{t-1} block, several column panels), every option, with and without bias."""
    for seq, back, states in [(False, False, False), (True, False, True), (True, True, False), (False, True, True)]:
        p = problem(cell, B, T, I, H, seed=B + T, states=states)
        if back and not states:
            p["b"] = None
        yf, wsf = k_forward(_cpu, cell, p, seq, back)
        yr, wsr = k_forward(_cpu.ref, cell, p, seq, back)
        np.testing.assert_allclose(yf, yr, rtol=1e-5, atol=1e-5)
        dy = rand(np.random.default_rng(1), *yf.shape)
        gf, gr = k_backward(_cpu, cell, p, wsf, dy, back), k_backward(_cpu.ref, cell, p, wsr, dy, back)
        assert gf.keys() == gr.keys()
        for k in gf:
            scale = max(1.0, float(np.abs(gr[k]).max()))
            np.testing.assert_allclose(gf[k], gr[k], rtol=1e-4, atol=2e-5 * scale, err_msg=f"{cell} d{k}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("act,rec", [("linear", "sigmoid"), ("relu", "tanh"), ("sigmoid", "linear")])
def test_other_activations_match_reference(cell, act, rec):
    p = problem(cell, 5, 6, 4, 11, seed=3, states=True)
    yf, wsf = k_forward(_cpu, cell, p, True, act=act, rec=rec)
    yr, wsr = k_forward(_cpu.ref, cell, p, True, act=act, rec=rec)
    np.testing.assert_allclose(yf, yr, rtol=1e-5, atol=1e-5)
    dy = rand(np.random.default_rng(2), *yf.shape)
    gf = k_backward(_cpu, cell, p, wsf, dy, act=act, rec=rec)
    gr = k_backward(_cpu.ref, cell, p, wsr, dy, act=act, rec=rec)
    for k in gf:
        np.testing.assert_allclose(gf[k], gr[k], rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(gr[k]).max())))


@pytest.mark.parametrize("cell", CELLS)
def test_saturated_gates_stay_finite_and_accurate(cell):
    """Large pre-activations: the vector exp/tanh saturate like the reference, no NaN/Inf."""
    p = problem(cell, 6, 9, 8, 20, seed=5, scale=6.0, states=True)
    p["x"] *= 10
    yf, wsf = k_forward(_cpu, cell, p, True)
    yr, wsr = k_forward(_cpu.ref, cell, p, True)
    assert np.isfinite(yf).all()
    np.testing.assert_allclose(yf, yr, atol=2e-5)   # pre-activations ~100: float32 sums differ ~1e-5
    dy = rand(np.random.default_rng(3), *yf.shape)
    gf, gr = k_backward(_cpu, cell, p, wsf, dy), k_backward(_cpu.ref, cell, p, wsr, dy)
    for k in gf:
        assert np.isfinite(gf[k]).all()
        np.testing.assert_allclose(gf[k], gr[k], rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(gr[k]).max())))


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_vector_activations_at_extremes(act):
    """The AVX2 exp/tanh against float64 over the whole float range: one unit, W = 1, U = 0."""
    v = np.array([-1e30, -1e4, -100, -88.5, -88.3762626, -88, -20, -9, -7.9, -1, -4e-4, -1e-5, -1e-30, 0,
                  1e-30, 1e-5, 3e-4, 0.3, 1, 5, 7.9, 9, 20, 88, 88.3762626, 88.5, 100, 1e4, 1e30], np.float32)
    p = {"x": v.reshape(-1, 1, 1), "w": np.ones((1, 1), np.float32), "u": np.zeros((1, 1), np.float32),
         "b": None, "h0": None, "c0": None}
    y = k_forward(_cpu, "simple_rnn", p, False, act=act)[0][:, 0]
    vd = v.astype(np.float64)
    want = np.tanh(vd) if act == "tanh" else 0.5 * (1 + np.tanh(vd / 2))
    np.testing.assert_allclose(y, want, rtol=4e-7, atol=3e-7)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_vector_activations_keep_nan(act):
    """A NaN input comes out NaN from the vector activations (as in IEEE arithmetic and PyTorch),
    never as a finite number that hides a broken input; run at every SIMD level by CI."""
    v = np.array([np.nan, 1.0, -np.nan, 0.5, np.nan, -3.0, 0.0, np.nan, 2.0] * 3, np.float32)
    p = {"x": v.reshape(-1, 1, 1), "w": np.ones((1, 1), np.float32), "u": np.zeros((1, 1), np.float32),
         "b": None, "h0": None, "c0": None}
    y = k_forward(_cpu, "simple_rnn", p, False, act=act)[0][:, 0]
    np.testing.assert_array_equal(np.isnan(y), np.isnan(v))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T", [1, 3, 17])
@pytest.mark.parametrize("seq", [False, True])
def test_kernel_gradients_through_time(cell, T, seq):
    """Central differences of sum(y * dy) wrt x, W, U, b, h0 (and c0) vs rnn_backward."""
    p = problem(cell, 2, T, 3, 4, seed=T, states=True)
    y, ws = k_forward(_cpu, cell, p, seq, back=(T == 3))
    dy = rand(np.random.default_rng(T + 7), *y.shape)
    g = k_backward(_cpu, cell, p, ws, dy, back=(T == 3))
    f = lambda: float((k_forward(_cpu, cell, p, seq, back=(T == 3))[0].astype(np.float64) * dy).sum())
    for k in ("x", "w", "u", "b", "h0") + (("c0",) if cell == "lstm" else ()):
        assert_grad_close(g[k], numeric_grad(f, p[k]))


def test_weight_gradients_accumulate_and_outputs_are_optional():
    p = problem("lstm", 3, 4, 5, 6, states=False)
    y, ws = k_forward(_cpu, "lstm", p, True)
    dy = rand(np.random.default_rng(0), *y.shape)
    once = k_backward(_cpu, "lstm", p, ws, dy)
    B, T, I = p["x"].shape
    _, sc_n = _cpu.rnn_workspace_size("lstm", B, T, I, 6)
    dw = np.ones_like(p["w"])
    _cpu.rnn_backward("lstm", dy, p["x"], p["w"], p["u"], ws, np.empty(sc_n, np.float32), None, dw, None, None)
    np.testing.assert_allclose(dw, 1 + once["w"], rtol=1e-6, atol=1e-6)
    dx = np.empty_like(p["x"])
    _cpu.rnn_backward("lstm", dy, p["x"], p["w"], p["u"], ws, np.empty(sc_n, np.float32), dx, None, None, None)
    np.testing.assert_allclose(dx, once["x"], rtol=1e-6, atol=1e-7)
    # Any subset of dW, dU, db (the weight-gradient GEMM's operand then has only their blocks).
    for want in (("u",), ("b",), ("w", "b"), ("u", "b")):
        got = {k: np.zeros_like(p[k]) if k in want else None for k in ("w", "u", "b")}
        _cpu.rnn_backward("lstm", dy, p["x"], p["w"], p["u"], ws, np.empty(sc_n, np.float32), None, got["w"],
                          got["u"], got["b"])
        for k in want:
            np.testing.assert_allclose(got[k], once[k], rtol=1e-6, atol=1e-6, err_msg=f"{want} d{k}")


@pytest.mark.parametrize("cell", CELLS)
def test_results_do_not_depend_on_thread_count(cell):
    # Big enough for 2 recurrence threads and a 2-thread copy into the weight-gradient GEMM's
    # [x | h | 1] operand (T*B*(I+H+1) >= 2^16); 2 threads also agree with the reference.
    p = problem(cell, 33, 30, 10, 64, seed=9, scale=0.2, states=True)   # contractive: no chaos over 30 steps
    out = []
    old = kilnet.get_num_threads()
    try:
        for n in (1, 2):
            kilnet.set_num_threads(n)
            y, ws = k_forward(_cpu, cell, p, True)
            out.append((y, k_backward(_cpu, cell, p, ws, np.ones_like(y))))
    finally:
        kilnet.set_num_threads(old)
    np.testing.assert_array_equal(out[0][0], out[1][0])
    for k in out[0][1]:
        np.testing.assert_allclose(out[0][1][k], out[1][1][k], rtol=1e-6, atol=1e-6)
    yr, wsr = k_forward(_cpu.ref, cell, p, True)
    gr = k_backward(_cpu.ref, cell, p, wsr, np.ones_like(yr))
    np.testing.assert_allclose(out[1][0], yr, rtol=1e-5, atol=1e-5)
    for k in gr:
        scale = max(1.0, float(np.abs(gr[k]).max()))
        np.testing.assert_allclose(out[1][1][k], gr[k], rtol=1e-4, atol=2e-5 * scale, err_msg=f"{cell} d{k}")


def test_portable_path_matches_reference():
    """The scalar step kernels (CPUs without AVX2, or KILNET_SIMD=scalar) in a fresh process."""
    code = f"""
import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
import numpy as np
from kilnet import _cpu
assert _cpu.simd_level() == "scalar"
import test_rnn as t
for cell, states in [(c, st) for c in t.CELLS for st in (True, False)]:
    p = t.problem(cell, 7, 5, 6, 19, seed=1, states=states)
    yf, wsf = t.k_forward(_cpu, cell, p, True, back=True)
    yr, wsr = t.k_forward(_cpu.ref, cell, p, True, back=True)
    np.testing.assert_allclose(yf, yr, rtol=1e-5, atol=1e-5)
    dy = np.ones_like(yf)
    gf, gr = t.k_backward(_cpu, cell, p, wsf, dy, back=True), t.k_backward(_cpu.ref, cell, p, wsr, dy, back=True)
    for k in gf:
        np.testing.assert_allclose(gf[k], gr[k], rtol=1e-4, atol=1e-4)
print("ok")
"""
    env = dict(os.environ, KILNET_SIMD="scalar")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H", [1, 7, 17, 33, 129])
def test_odd_hidden_sizes_match_reference(cell, H):
    """Hidden sizes around the 16-lane vectors and the 4-panel (64-column) register tiles of the
    AVX-512 kernels (and the AVX2 ones): masked tails of 1..15 units, partial panels, partial
    panel groups; B = 13: row blocks of 6, 6 and 1 (5, 4, 4 balanced) rows."""
    for seq, back, states in [(True, False, True), (False, True, False)]:
        p = problem(cell, 13, 6, 19, H, seed=H, scale=0.4, states=states)
        yf, wsf = k_forward(_cpu, cell, p, seq, back)
        yr, wsr = k_forward(_cpu.ref, cell, p, seq, back)
        np.testing.assert_allclose(yf, yr, rtol=1e-5, atol=1e-5)
        dy = rand(np.random.default_rng(H + 1), *yf.shape)
        gf, gr = k_backward(_cpu, cell, p, wsf, dy, back), k_backward(_cpu.ref, cell, p, wsr, dy, back)
        for k in gf:
            scale = max(1.0, float(np.abs(gr[k]).max()))
            np.testing.assert_allclose(gf[k], gr[k], rtol=1e-4, atol=2e-5 * scale, err_msg=f"{cell} H={H} d{k}")


def _level_results(level):
    """Outputs and gradients of every cell on odd shapes, computed at a SIMD level in a child
    process (KILNET_SIMD is read once per process); None when the machine lacks the level."""
    code = f"""
import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
import numpy as np
from kilnet import _cpu
import test_rnn as t
out = {{"level": np.array(_cpu.simd_level())}}
for cell in t.CELLS:
    for H in (7, 33, 129):
        p = t.problem(cell, 13, 5, 9, H, seed=H, scale=0.4, states=True)
        y, ws = t.k_forward(_cpu, cell, p, True)
        g = t.k_backward(_cpu, cell, p, ws, t.rand(np.random.default_rng(H), *y.shape))
        out[f"{{cell}}_{{H}}_y"] = y
        for k, v in g.items():
            out[f"{{cell}}_{{H}}_d{{k}}"] = v
np.savez(sys.argv[1], **out)
print("ok")
"""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "r.npz")
        env = dict(os.environ, KILNET_SIMD=level)
        res = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
        with np.load(path) as z:
            r = {k: z[k] for k in z.files}
    return r if str(r.pop("level")) == level else None


def test_avx2_level_matches_avx512_level():
    """KILNET_SIMD=avx2 on an AVX-512 machine: the AVX2 step kernels (what an AVX2-only CPU runs)
    agree with the AVX-512 ones, output by output, gradient by gradient."""
    hi = _level_results("avx512")
    if hi is None:
        pytest.skip("no AVX-512 on this machine")
    lo = _level_results("avx2")
    assert lo is not None and lo.keys() == hi.keys()
    for k in hi:
        scale = max(1.0, float(np.abs(hi[k]).max()))
        np.testing.assert_allclose(lo[k], hi[k], rtol=1e-5, atol=1e-5 * scale, err_msg=k)


# ---------------------------------------------------------------------------------- kernel bad input
def test_kernel_rejects_bad_arguments():
    p = problem("lstm", 2, 3, 4, 5)
    B, T, I = p["x"].shape
    ws = np.empty(_cpu.rnn_workspace_size("lstm", B, T, I, 5)[0], np.float32)
    y = np.empty((B, 5), np.float32)
    fwd = lambda **kw: _cpu.rnn_forward(**{"cell": "lstm", "x": p["x"], "w": p["w"], "u": p["u"], "b": p["b"],
                                           "y": y, "ws": ws, **kw})
    fwd()
    with pytest.raises(ValueError, match="unknown recurrent cell"):
        fwd(cell="rnn2")
    with pytest.raises(TypeError, match="'x' must have dtype float32"):
        fwd(x=p["x"].astype(np.float64))
    with pytest.raises(ValueError, match="'x' must be 3-D, got 2-D"):
        fwd(x=p["x"][:, 0])
    with pytest.raises(ValueError, match="sequence length must be >= 1, got 0"):
        fwd(x=np.empty((B, 0, I), np.float32))
    with pytest.raises(ValueError, match=r"'w' must have shape \(4, 20\), got \(3, 20\)"):
        fwd(w=p["w"][:3].copy())
    with pytest.raises(ValueError, match=r"'u' must have shape \(units, 4 \* units\)"):
        fwd(u=np.zeros((5, 15), np.float32))
    with pytest.raises(ValueError, match=r"'b' must have shape \(20,\)"):
        fwd(b=np.zeros(21, np.float32))
    with pytest.raises(ValueError, match=r"'y' must have shape \(2, 5\), got \(2, 6\)"):
        fwd(y=np.empty((B, 6), np.float32))
    with pytest.raises(ValueError, match=r"'h0' must have shape \(2, 5\), got \(3, 5\)"):
        fwd(h0=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"'c0' must have shape \(2, 5\), got \(2, 4\)"):
        fwd(c0=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="'ws' must hold at least"):
        fwd(ws=ws[:10])
    with pytest.raises(ValueError, match="C-contiguous"):
        fwd(x=np.asfortranarray(p["x"]))
    with pytest.raises(ValueError, match="output 'ws' overlaps input 'x'"):
        big = np.zeros(ws.size + p["x"].size, np.float32)
        fwd(x=big[:p["x"].size].reshape(p["x"].shape), ws=big)
    with pytest.raises(ValueError, match="unknown activation 'softmax'"):
        fwd(activation="softmax")
    with pytest.raises(ValueError, match="c0 is an LSTM state"):
        pg = problem("gru", 2, 3, 4, 5)
        _cpu.rnn_forward("gru", pg["x"], pg["w"], pg["u"], pg["b"], y, np.empty(10**4, np.float32),
                         c0=np.zeros((2, 5), np.float32))
    sc = np.empty(_cpu.rnn_workspace_size("lstm", B, T, I, 5)[1], np.float32)
    dy = np.ones_like(y)
    bwd = lambda **kw: _cpu.rnn_backward(**{"cell": "lstm", "dy": dy, "x": p["x"], "w": p["w"], "u": p["u"],
                                            "ws": ws, "scratch": sc, "dx": None, "dw": None, "du": None,
                                            "db": None, **kw})
    bwd()
    with pytest.raises(ValueError, match=r"'dy' must have shape \(2, 3, 5\), got \(2, 2, 5\)"):
        bwd(dy=np.ones((2, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"'dw' must have shape \(4, 20\)"):
        bwd(dw=np.zeros((4, 21), np.float32))
    with pytest.raises(ValueError, match="'scratch' must hold at least"):
        bwd(scratch=sc[:5])
    with pytest.raises(ValueError, match="output 'dx' overlaps"):
        bwd(dx=p["x"])
    with pytest.raises(ValueError, match="output 'scratch' overlaps input 'ws'"):
        bwd(scratch=ws)


# ---------------------------------------------------------------------------------- layers
def _layer_grads(layer, x, dy):
    for s in layer._specs:
        getattr(layer, "d" + s.attr)[...] = 0
    y = np.array(layer.forward(x, True))
    dx = np.array(layer.backward(dy.copy()))
    return y, dx, {s.attr: np.array(getattr(layer, "d" + s.attr)) for s in layer._specs}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T", [1, 3, 17])
@pytest.mark.parametrize("seq", [False, True])
def test_layer_gradients_through_time(cell, T, seq):
    rng = np.random.default_rng(T)
    layer = LAYERS[cell](4, return_sequences=seq, go_backwards=(T == 17))
    layer._build((None, T, 3))
    layer.bias[...] = rand(rng, *layer.bias.shape, lo=-0.5, hi=0.5)
    x = rand(rng, 2, T, 3)
    dy = rand(rng, 2, *layer.output_shape[1:])
    y, dx, grads = _layer_grads(layer, x, dy)
    assert y.shape == (2, T, 4) if seq else (2, 4)
    f = lambda: float((np.array(layer.forward(x, True)).astype(np.float64) * dy).sum())
    assert_grad_close(dx, numeric_grad(f, x))
    for attr in ("kernel", "recurrent_kernel", "bias"):
        assert_grad_close(grads[attr], numeric_grad(f, getattr(layer, attr)))


@pytest.mark.parametrize("cell", CELLS)
def test_layer_initial_state_and_its_gradient(cell):
    rng = np.random.default_rng(0)
    layer = LAYERS[cell](5, return_sequences=True)
    x = rand(rng, 3, 4, 2)
    states = [rand(rng, 3, 5) for _ in range(2 if cell == "lstm" else 1)]
    y = layer(x, initial_state=states)
    assert not np.allclose(y, layer(x))
    dy = rand(rng, *y.shape)
    layer.forward(x, True, initial_state=states)
    layer.backward(dy)
    grads = [np.array(g) for g in layer.initial_state_grads]
    for s, g in zip(states, grads):
        f = lambda: float((np.array(layer.forward(x, True, initial_state=states)).astype(np.float64) * dy).sum())
        assert_grad_close(g, numeric_grad(f, s))
    with pytest.raises(ValueError, match=r"initial_state\[0\] must have shape \(3, 5\), got \(2, 5\)"):
        layer(x, initial_state=[np.zeros((2, 5), np.float32)] * len(states))
    with pytest.raises(ValueError, match="initial_state must hold"):
        layer(x, initial_state=[np.zeros((3, 5), np.float32)] * 3)


def test_keras_weight_layouts_and_initializers():
    set_random_seed(0)
    for cls, g in ((SimpleRNN, 1), (LSTM, 4), (GRU, 3)):
        layer = cls(8)
        layer._build((None, 5, 3))
        assert [s.attr for s in layer._specs] == ["kernel", "recurrent_kernel", "bias"]
        assert layer.kernel.shape == (3, 8 * g) and layer.recurrent_kernel.shape == (8, 8 * g)
        assert layer.bias.shape == ((2, 24) if cls is GRU else (8 * g,))
        rk = layer.recurrent_kernel.astype(np.float64)
        np.testing.assert_allclose(rk @ rk.T, np.eye(8), atol=1e-5)          # orthogonal rows
        limit = np.sqrt(6 / (3 + 8 * g))
        assert np.abs(layer.kernel).max() <= limit
    lstm = LSTM(4)
    lstm._build((None, 2, 3))
    np.testing.assert_array_equal(lstm.bias, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])  # unit_forget_bias
    assert LSTM(2, unit_forget_bias=False)._build((None, 2, 3)) and True
    assert SimpleRNN(7).count_params() == 0
    r = SimpleRNN(7)
    r._build((None, 5, 3))
    assert r.count_params() == 3 * 7 + 7 * 7 + 7
    g = GRU(7)
    g._build((None, 5, 3))
    assert g.count_params() == 3 * (3 * 7 + 7 * 7 + 2 * 7)      # Keras's GRU(7) on 3 features: 231


def test_no_bias_and_trainable_false():
    rng = np.random.default_rng(1)
    layer = LSTM(3, use_bias=False, return_sequences=True)
    x = rand(rng, 2, 4, 5)
    y = layer(x)
    assert [s.attr for s in layer._specs] == ["kernel", "recurrent_kernel"]
    p = {"x": x, "w": layer.kernel, "u": layer.recurrent_kernel, "b": None, "h0": None, "c0": None}
    np.testing.assert_allclose(y, k_forward(_cpu.ref, "lstm", p, True)[0], rtol=1e-5, atol=1e-6)
    frozen = GRU(3)
    frozen._build((None, 4, 5))
    frozen.trainable = False
    frozen.forward(x, True)
    dx = frozen.backward(np.ones((2, 3), np.float32))
    assert dx.shape == x.shape and not frozen.dkernel.any()


def test_layer_buffers_are_reused_across_batches():
    layer = GRU(6, return_sequences=True)
    layer._build((None, 5, 3))
    x = rand(np.random.default_rng(0), 8, 5, 3)
    y1 = layer.forward(x, True)
    dx1 = layer.backward(np.ones_like(y1))
    y2 = layer.forward(x, True)
    dx2 = layer.backward(np.ones_like(y2))
    assert np.shares_memory(y1, y2) and np.shares_memory(dx1, dx2)
    y3 = layer.forward(x[:3], True)          # a smaller last batch: a view of the same buffer
    assert y3.shape == (3, 5, 6) and np.shares_memory(y3, y1)


@pytest.mark.parametrize("cls", [SimpleRNN, LSTM, GRU])
def test_stacked_model_learns_and_round_trips(tmp_path, cls):
    """Stacking (return_sequences into another recurrent layer), fit, save, load."""
    set_random_seed(2)
    r = np.random.default_rng(0)
    x = r.standard_normal((192, 8, 3)).astype(np.float32)
    y = (x[:, :4, 0].sum(1) > x[:, 4:, 1].sum(1)).astype(np.int64)
    m = Sequential([cls(12, return_sequences=True, input_shape=(8, 3)), cls(6, go_backwards=True),
                    Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(x, y, epochs=6, batch_size=32, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    path = tmp_path / "rnn.h5"
    m.save(path)
    m2 = load_model(path)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    for a, b in zip(m.layers, m2.layers):
        assert a.get_config() == b.get_config()
    import h5py
    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["model_config"])["config"]["layers"]
        assert [l["class_name"] for l in cfg] == ["InputLayer", cls.__name__, cls.__name__, "Dense"]
        lname = m.layers[0].name
        names = [n.decode() for n in f["model_weights"][lname].attrs["weight_names"]]
        cell = {"SimpleRNN": "simple_rnn_cell", "LSTM": "lstm_cell", "GRU": "gru_cell"}[cls.__name__]
        assert names == [f"{m.name}/{lname}/{cell}/{w}" for w in ("kernel", "recurrent_kernel", "bias")]  # Keras's
    m2.fit(x, y, epochs=1, batch_size=32, verbose=0)      # the loaded optimizer state resumes


def test_time_distributed_dense(tmp_path):
    set_random_seed(3)
    r = np.random.default_rng(0)
    x = r.standard_normal((64, 6, 3)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int64)                      # a label per step
    m = Sequential([LSTM(8, return_sequences=True, input_shape=(6, 3)),
                    TimeDistributed(Dense(2, activation="softmax"))])
    assert m.output_shape == (None, 6, 2)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    h = m.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    td = m.layers[1]
    assert [s.attr for s in td._specs] == ["kernel", "bias"] and td.kernel is td.layer.kernel
    seq = np.array(m.layers[0].forward(x, False))
    np.testing.assert_allclose(m.predict(x), np.array(td.layer.forward(seq.reshape(-1, 8))).reshape(64, 6, 2),
                               rtol=1e-6)
    m.save(tmp_path / "td.h5")
    m2 = load_model(tmp_path / "td.h5")
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    assert m2.layers[1].get_config()["layer"]["class_name"] == "Dense"
    # Keras 2's config form of the wrapped layer, and a gradient check through the wrapper
    td2 = TimeDistributed.from_config({"name": "time_distributed", "trainable": True, "dtype": "float32",
                                       "layer": {"class_name": "Dense", "config": {"name": "dense", "units": 3,
                                                                                  "activation": "tanh"}}})
    td2._build((None, 4, 5))
    xx = rand(r, 2, 4, 5)
    dy = rand(r, 2, 4, 3)
    _, dx, grads = _layer_grads(td2, xx, dy)
    f = lambda: float((np.array(td2.forward(xx, True)).astype(np.float64) * dy).sum())
    assert_grad_close(dx, numeric_grad(f, xx))
    assert_grad_close(grads["kernel"], numeric_grad(f, td2.kernel))
    with pytest.raises(ValueError, match="can wrap"):
        TimeDistributed(LSTM(3))
    with pytest.raises(ValueError, match="unsupported layer type 'Lambda'"):
        TimeDistributed({"class_name": "Lambda", "config": {}})


KERAS3_LSTM = {
    "name": "lstm", "trainable": True,
    "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None},
    "return_sequences": False, "return_state": False, "go_backwards": False, "stateful": False, "unroll": False,
    "zero_output_for_mask": False, "units": 32, "activation": "tanh", "recurrent_activation": "sigmoid",
    "use_bias": True,
    "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform", "config": {"seed": None},
                           "registered_name": None},
    "recurrent_initializer": {"module": "keras.initializers", "class_name": "Orthogonal",
                              "config": {"gain": 1.0, "seed": None}, "registered_name": None},
    "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": None},
    "unit_forget_bias": True, "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
    "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None, "bias_constraint": None,
    "dropout": 0.0, "recurrent_dropout": 0.0, "seed": None}

KERAS2_GRU = {
    "name": "gru", "trainable": True, "dtype": "float32", "batch_input_shape": [None, 28, 28],
    "return_sequences": True, "return_state": False, "go_backwards": False, "stateful": False, "unroll": False,
    "time_major": False, "units": 16, "activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True,
    "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
    "recurrent_initializer": {"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}},
    "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
    "recurrent_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
    "kernel_constraint": None, "recurrent_constraint": None, "bias_constraint": None, "dropout": 0.0,
    "recurrent_dropout": 0.0, "implementation": 2, "reset_after": True}


def test_keras_configs_load_and_round_trip():
    lstm = LSTM.from_config(dict(KERAS3_LSTM))
    assert lstm.units == 32 and lstm.unit_forget_bias and not lstm.return_sequences
    cfg = lstm.get_config()
    assert {k: cfg[k] for k in KERAS3_LSTM} == KERAS3_LSTM
    gru = GRU.from_config(dict(KERAS2_GRU))
    assert gru.return_sequences and gru._input_shape == (28, 28)
    assert gru.get_config()["reset_after"] is True
    rnn = SimpleRNN(5, activation="relu", go_backwards=True)
    assert SimpleRNN.from_config(rnn.get_config()).get_config() == rnn.get_config()
    assert "recurrent_activation" not in rnn.get_config()


def test_keras_file_weights_load(tmp_path):
    """A Keras-3-layout .h5 (GRU with its (2, 3u) bias, then Dense) loads and computes as Keras does."""
    import h5py
    r = np.random.default_rng(4)
    W, U, b = rand(r, 28, 48), rand(r, 16, 48), rand(r, 2, 48)
    Wd, bd = rand(r, 16, 10), rand(r, 10)
    gru_cfg = {**KERAS2_GRU, "dtype": KERAS3_LSTM["dtype"], "return_sequences": False}
    del gru_cfg["batch_input_shape"], gru_cfg["time_major"], gru_cfg["implementation"]
    cfg = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [None, 28, 28],
                                                                          "dtype": "float32", "name": "input_layer"}},
        {"module": "keras.layers", "class_name": "GRU", "config": gru_cfg},
        {"module": "keras.layers", "class_name": "Dense", "config": {"name": "dense", "units": 10,
                                                                     "activation": "softmax"}}],
        "build_input_shape": [None, 28, 28]}}
    path = tmp_path / "keras.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        f.attrs["keras_version"] = "3.15.1"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([b"gru", b"dense"])
        for lname, names, arrays in (("gru", ["sequential/gru/gru_cell/kernel", "sequential/gru/gru_cell/recurrent_kernel",
                                               "sequential/gru/gru_cell/bias"], (W, U, b)),
                                     ("dense", ["sequential/dense/kernel", "sequential/dense/bias"], (Wd, bd))):
            g = mw.create_group(lname)
            g.attrs["weight_names"] = np.array([n.encode() for n in names])
            for n, a in zip(names, arrays):
                g.create_dataset(n, data=a)
    m = load_model(path)
    x = rand(r, 3, 28, 28)
    # numpy GRU, Keras's equations (reset_after=True)
    sig = lambda v: 1 / (1 + np.exp(-v))
    h = np.zeros((3, 16))
    for t in range(28):
        xw, hu = x[:, t] @ W + b[0], h @ U + b[1]
        z, rr = sig(xw[:, :16] + hu[:, :16]), sig(xw[:, 16:32] + hu[:, 16:32])
        hh = np.tanh(xw[:, 32:] + rr * hu[:, 32:])
        h = z * h + (1 - z) * hh
    logits = h @ Wd + bd
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(m.predict(x), p / p.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)


KERAS_RNN_SCRIPT = r"""
import os, sys, numpy as np
os.environ["KERAS_BACKEND"] = "torch"
import keras
from keras import layers as L
mode, path, xpath, ppath = sys.argv[1:5]
x = np.load(xpath)
if mode == "write":
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input(x.shape[1:]), L.SimpleRNN(4, return_sequences=True),
                          L.LSTM(6, return_sequences=True, go_backwards=True), L.GRU(5, return_sequences=True),
                          L.TimeDistributed(L.Dense(3, activation="softmax"))])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.fit(x, np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2]) % 3, epochs=2, verbose=0)
    m.save(path)
else:
    m = keras.models.load_model(path)
    print("iterations", int(m.optimizer.iterations))
np.save(ppath, m.predict(x, verbose=0))
"""


def _keras(tmp_path, mode, path, x):
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    if subprocess.run([sys.executable, "-c", "import keras"], capture_output=True, env=env).returncode:
        pytest.skip("keras (3, torch backend) not installed")
    (tmp_path / "k.py").write_text(KERAS_RNN_SCRIPT)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([sys.executable, str(tmp_path / "k.py"), mode, str(path), str(tmp_path / "x.npy"),
                        str(tmp_path / "p.npy")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(tmp_path / "p.npy"), r.stdout


def test_keras_rnn_files_both_ways(tmp_path):
    """Keras 3 writes SimpleRNN / LSTM(go_backwards) / GRU / TimeDistributed(Dense): kilnet loads it
    (weights, optimizer state) with Keras's predictions; Keras loads kilnet's file back."""
    x = np.random.default_rng(0).uniform(size=(8, 5, 3)).astype(np.float32)
    expected, _ = _keras(tmp_path, "write", tmp_path / "keras.h5", x)
    m = load_model(tmp_path / "keras.h5")
    assert [type(l).__name__ for l in m.layers] == ["SimpleRNN", "LSTM", "GRU", "TimeDistributed"]
    assert m.optimizer.iterations == 2
    np.testing.assert_allclose(m.predict(x), expected, rtol=1e-5, atol=1e-6)
    m.fit(x, np.zeros((8, 5)), epochs=1, verbose=0)            # resumes training from Keras's state
    m.save(tmp_path / "kilnet.h5")
    got, out = _keras(tmp_path, "read", tmp_path / "kilnet.h5", x)
    np.testing.assert_allclose(got, m.predict(x), rtol=1e-5, atol=1e-6)
    assert "iterations 3" in out


# ---------------------------------------------------------------------------------- bad input
def test_layer_bad_input_errors():
    layer = SimpleRNN(4)
    with pytest.raises(ValueError, match=r"expects 3-D input \(batch, timesteps, features\), got shape \(5, 3\)"):
        layer(np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="sequence length .* must be at least 1"):
        layer(np.zeros((5, 0, 3), np.float32))
    layer(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match="was built for 3 features per step"):
        layer(np.zeros((5, 2, 4), np.float32))
    m = Sequential([LSTM(4)])
    m.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="expects inputs of shape \\(batch, timesteps, features\\)"):
        m.fit(np.zeros((8, 3), np.float32), np.zeros((8, 4), np.float32), verbose=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"stateful": True}, "stateful=True"),
    ({"dropout": 0.2}, "dropout=0.2 is not supported"), ({"recurrent_dropout": 0.1}, "recurrent_dropout"),
    ({"dropout": 1.5}, r"in \[0, 1\)"), ({"activation": "softmax"}, "activation='softmax' is not supported"),
    ({"recurrent_activation": "hard_sigmoid"}, "recurrent_activation='hard_sigmoid'"),
    ({"kernel_regularizer": {"class_name": "L2"}}, "kernel_regularizer"), ({"time_major": True}, "time_major"),
    ({"units": 0}, "units must be a positive int"), ({"reset_after": False}, "reset_after=False"),
    ({"bogus": 1}, "unexpected argument")])
def test_unsupported_options_are_refused(kwargs, match):
    kwargs = {"units": 3, **kwargs}
    cls = GRU if "reset_after" in kwargs else LSTM
    with pytest.raises((ValueError, TypeError), match=match):
        cls(**kwargs)


# ---------------------------------------------------------------------------------- PyTorch parity
def _torch_module(cell, layer, torch):
    """A torch.nn.RNN/LSTM/GRU holding the kilnet layer's weights (layouts mapped)."""
    H, I = layer.units, layer.kernel.shape[0]
    W, U = layer.kernel.T, layer.recurrent_kernel.T          # (G*H, I), (G*H, H)
    if cell == "simple_rnn":
        mod = torch.nn.RNN(I, H, batch_first=True, nonlinearity=layer.activation)
        b_ih, b_hh = layer.bias, np.zeros(H, np.float32)
    elif cell == "lstm":                                     # gate order i f g o == Keras i f c o
        mod = torch.nn.LSTM(I, H, batch_first=True)
        b_ih, b_hh = layer.bias, np.zeros(4 * H, np.float32)
    else:                                                    # torch r z n <- Keras z r h
        mod = torch.nn.GRU(I, H, batch_first=True)
        perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
        W, U = W[perm], U[perm]
        b_ih, b_hh = layer.bias[0][perm], layer.bias[1][perm]
    with torch.no_grad():
        for name, v in (("weight_ih_l0", W), ("weight_hh_l0", U), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(mod, name).copy_(torch.from_numpy(np.ascontiguousarray(v)))
    return mod


def _torch_grads_in_keras_layout(cell, mod, H):
    gw, gu = mod.weight_ih_l0.grad.numpy().T, mod.weight_hh_l0.grad.numpy().T
    gbi, gbh = mod.bias_ih_l0.grad.numpy(), mod.bias_hh_l0.grad.numpy()
    if cell == "gru":
        perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]                # the permutation is its own inverse
        return gw[:, perm], gu[:, perm], np.stack([gbi[perm], gbh[perm]])
    return gw, gu, gbi          # Keras's single bias: torch's b_ih gradient (b_hh's is equal)


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("B,T,I,H", [(4, 9, 5, 7), (16, 12, 20, 40)])
def test_matches_torch(cell, seq, B, T, I, H):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(B + T + H)
    layer = LAYERS[cell](H, return_sequences=seq)
    layer._build((None, T, I))
    layer.bias[...] = rand(rng, *layer.bias.shape, lo=-0.5, hi=0.5)
    x = rand(rng, B, T, I)
    h0 = rand(rng, B, H)
    c0 = rand(rng, B, H)
    states = [h0, c0] if cell == "lstm" else [h0]
    y = np.array(layer.forward(x, True, initial_state=states))
    dy = rand(rng, *y.shape)
    for s in layer._specs:
        getattr(layer, "d" + s.attr)[...] = 0
    dx = np.array(layer.backward(dy))
    dstates = [np.array(g) for g in layer.initial_state_grads]

    mod = _torch_module(cell, layer, torch)
    xt = torch.from_numpy(x).requires_grad_()
    st = [torch.from_numpy(s[None]).requires_grad_() for s in states]
    out, _ = mod(xt, tuple(st) if cell == "lstm" else st[0])
    yt = out if seq else out[:, -1]
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=2e-6)
    gw, gu, gb = _torch_grads_in_keras_layout(cell, mod, H)
    for name, ours, theirs in [("dx", dx, xt.grad.numpy()), ("dkernel", layer.dkernel, gw),
                               ("drecurrent_kernel", layer.drecurrent_kernel, gu), ("dbias", layer.dbias, gb)] + \
            [(f"dstate{i}", d, s.grad.numpy()[0]) for i, (d, s) in enumerate(zip(dstates, st))]:
        scale = max(1.0, float(np.abs(theirs).max()))
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{cell} {name}")


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H", [1, 17, 129])
def test_odd_hidden_sizes_match_torch(cell, H):
    """Forward and every gradient against torch where the vector kernels have tails (B = 7: row
    blocks of 4 and 3; T = 11)."""
    test_matches_torch(cell, True, 7, 11, 13, H)


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_go_backwards_matches_torch_on_reversed_input():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    layer = LSTM(6, return_sequences=True, go_backwards=True)
    x = rand(rng, 3, 5, 4)
    y = layer(x)
    mod = _torch_module("lstm", layer, torch)
    out, _ = mod(torch.from_numpy(x[:, ::-1].copy()))
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-5, atol=2e-6)   # processing order, as Keras
