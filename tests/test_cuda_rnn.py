"""CUDA recurrent kernels (kilnet._cuda.rnn_forward / rnn_backward) against the CPU reference
(kilnet._cpu.ref): SimpleRNN, LSTM, GRU; return_sequences, go_backwards, h0/c0 given or None,
biases or None, other activations; odd sizes (batch 1, 3; T 1, 5; features 3, 7; units 1, 5,
17). Outputs and gradients wrt x, h0, c0 start as NaN (an unwritten element fails); dw, du, db
start non-zero (they accumulate). The GPU's ws feeds the GPU's backward, the reference's ws
the reference's backward, so each side is checked end to end."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
CELLS = list(GATES)


def problem(cell, B, T, I, H, seed=0, scale=0.5, states=False, bias=True):
    r = np.random.default_rng(seed)
    g = GATES[cell] * H
    f = lambda *s, lo=-1.0, hi=1.0: r.uniform(lo, hi, s).astype(np.float32)
    p = {"x": f(B, T, I), "w": f(I, g, lo=-scale, hi=scale), "u": f(H, g, lo=-scale, hi=scale),
         "b": f(*((2, g) if cell == "gru" else (g,)), lo=-scale, hi=scale) if bias else None,
         "h0": None, "c0": None}
    if states:
        p["h0"] = f(B, H)
        if cell == "lstm":
            p["c0"] = f(B, H)
    return p


def cpu_fwd_bwd(cell, p, seq, back, dy, act="tanh", rec="sigmoid"):
    K = _cpu.ref
    B, T, I = p["x"].shape
    H = p["u"].shape[0]
    ws_n, sc_n = K.rnn_workspace_size(cell, B, T, I, H)
    ws = np.full(ws_n, np.nan, np.float32)
    y = np.full((B, T, H) if seq else (B, H), np.nan, np.float32)
    K.rnn_forward(cell, p["x"], p["w"], p["u"], p["b"], y, ws, p["h0"], p["c0"], act, rec, back)
    g = {"x": np.full_like(p["x"], np.nan), "w": np.full_like(p["w"], 0.25), "u": np.full_like(p["u"], -0.25),
         "b": None if p["b"] is None else np.full_like(p["b"], 0.5),
         "h0": None if p["h0"] is None else np.full((B, H), np.nan, np.float32),
         "c0": None if p["c0"] is None else np.full((B, H), np.nan, np.float32)}
    K.rnn_backward(cell, dy, p["x"], p["w"], p["u"], ws, np.full(sc_n, np.nan, np.float32), g["x"], g["w"],
                   g["u"], g["b"], g["h0"], g["c0"], act, rec, back)
    return y, {k: v for k, v in g.items() if v is not None}


def gpu_fwd_bwd(gpu, cell, p, seq, back, dy, act="tanh", rec="sigmoid", stream=None):
    k, cp = gpu.k, gpu.cp
    B, T, I = p["x"].shape
    H = p["u"].shape[0]
    ws_n, sc_n = k.rnn_workspace_size(cell, B, T, I, H)
    assert (ws_n, sc_n) == _cpu.rnn_workspace_size(cell, B, T, I, H)
    d = {n: gpu.dev(v) for n, v in p.items()}
    ws = gpu.poisoned(ws_n)
    y = gpu.poisoned((B, T, H) if seq else (B, H))
    g = {"x": gpu.poisoned(p["x"].shape), "w": cp.full(p["w"].shape, 0.25, cp.float32),
         "u": cp.full(p["u"].shape, -0.25, cp.float32),
         "b": None if p["b"] is None else cp.full(p["b"].shape, 0.5, cp.float32),
         "h0": None if p["h0"] is None else gpu.poisoned((B, H)),
         "c0": None if p["c0"] is None else gpu.poisoned((B, H))}
    scratch = gpu.poisoned(sc_n)
    dyd = gpu.dev(dy)
    if stream is not None:
        cp.cuda.get_current_stream().synchronize()
    k.rnn_forward(cell, d["x"], d["w"], d["u"], d["b"], y, ws, d["h0"], d["c0"], act, rec, back, stream=stream)
    k.rnn_backward(cell, dyd, d["x"], d["w"], d["u"], ws, scratch, g["x"], g["w"], g["u"], g["b"], g["h0"],
                   g["c0"], act, rec, back, stream=stream)
    if stream is not None:
        stream.synchronize()
    return gpu.host(y), {n: gpu.host(v) for n, v in g.items() if v is not None}


def check(gpu, cell, p, seq, back, act="tanh", rec="sigmoid", tol=1.0, stream=None):
    B, T, _ = p["x"].shape
    H = p["u"].shape[0]
    dy = np.random.default_rng(B * 7 + T).uniform(-1, 1, (B, T, H) if seq else (B, H)).astype(np.float32)
    yg, gg = gpu_fwd_bwd(gpu, cell, p, seq, back, dy, act, rec, stream)
    yc, gc = cpu_fwd_bwd(cell, p, seq, back, dy, act, rec)
    np.testing.assert_allclose(yg, yc, rtol=1e-5 * tol, atol=1e-5 * tol, err_msg=f"{cell} y")
    assert gg.keys() == gc.keys()
    for n in gc:
        scale = max(1.0, float(np.abs(gc[n]).max()))
        np.testing.assert_allclose(gg[n], gc[n], rtol=1e-4 * tol, atol=2e-5 * tol * scale * np.sqrt(T),
                                   err_msg=f"{cell} d{n}")


# (B, T, I, H): the sizes the brief asks for, crossed sparingly, and one larger problem
SIZES = [(1, 1, 3, 1), (3, 5, 7, 5), (1, 5, 3, 17), (3, 1, 7, 17), (3, 5, 3, 1), (1, 5, 7, 5),
         (5, 13, 9, 33)]
# (return_sequences, go_backwards, states, bias)
OPTIONS = [(False, False, False, True), (True, False, True, True), (True, True, False, False),
           (False, True, True, True)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B,T,I,H", SIZES)
@pytest.mark.parametrize("seq,back,states,bias", OPTIONS)
def test_rnn_matches_cpu_reference(gpu, cell, B, T, I, H, seq, back, states, bias):
    p = problem(cell, B, T, I, H, seed=B + 10 * T + 100 * H, states=states, bias=bias)
    check(gpu, cell, p, seq, back)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("act,rec", [("linear", "sigmoid"), ("relu", "tanh"), ("sigmoid", "linear")])
def test_rnn_other_activations(gpu, cell, act, rec):
    p = problem(cell, 3, 5, 4, 11, seed=3, states=True)
    check(gpu, cell, p, True, False, act, rec, tol=3.0)


@pytest.mark.parametrize("cell", CELLS)
def test_rnn_saturated_gates_stay_finite(gpu, cell):
    p = problem(cell, 3, 7, 5, 17, seed=5, scale=6.0, states=True)
    p["x"] *= 10
    B, T, _ = p["x"].shape
    dy = np.random.default_rng(3).uniform(-1, 1, (B, T, 17)).astype(np.float32)
    yg, gg = gpu_fwd_bwd(gpu, cell, p, True, False, dy)
    assert np.isfinite(yg).all()
    assert all(np.isfinite(v).all() for v in gg.values())
    check(gpu, cell, p, True, False, tol=30.0)


def test_rnn_on_a_stream(gpu):
    s = gpu.cp.cuda.Stream(non_blocking=True)
    for cell in CELLS:
        check(gpu, cell, problem(cell, 3, 5, 7, 17, seed=9, states=True), True, True, stream=s)


def test_rnn_optional_gradients(gpu):
    """dx, dw, du, db, dh0, dc0 may each be None."""
    cp, k = gpu.cp, gpu.k
    p = problem("lstm", 3, 4, 5, 6, states=True)
    B, T, I = p["x"].shape
    H = 6
    ws_n, sc_n = k.rnn_workspace_size("lstm", B, T, I, H)
    d = {n: gpu.dev(v) for n, v in p.items()}
    ws, y = cp.empty(ws_n, cp.float32), cp.empty((B, T, H), cp.float32)
    k.rnn_forward("lstm", d["x"], d["w"], d["u"], d["b"], y, ws, d["h0"], d["c0"])
    dy = np.random.default_rng(0).uniform(-1, 1, (B, T, H)).astype(np.float32)
    _, gc = cpu_fwd_bwd("lstm", p, True, False, dy)
    du = cp.full(p["u"].shape, -0.25, cp.float32)
    k.rnn_backward("lstm", gpu.dev(dy), d["x"], d["w"], d["u"], ws, cp.empty(sc_n, cp.float32), None, None, du,
                   None)
    np.testing.assert_allclose(gpu.host(du), gc["u"], rtol=1e-4, atol=1e-4)


def test_rnn_bad_input(gpu):
    cp, k = gpu.cp, gpu.k
    x = cp.zeros((2, 3, 4), cp.float32)
    w, u, b = cp.zeros((4, 20), cp.float32), cp.zeros((5, 20), cp.float32), cp.zeros(20, cp.float32)
    ws_n, sc_n = k.rnn_workspace_size("lstm", 2, 3, 4, 5)
    y, ws = cp.zeros((2, 5), cp.float32), cp.zeros(ws_n, cp.float32)
    k.rnn_forward("lstm", x, w, u, b, y, ws)   # valid
    with pytest.raises(ValueError, match="unknown recurrent cell"):
        k.rnn_forward("rnn", x, w, u, b, y, ws)
    with pytest.raises(TypeError, match="CuPy"):
        k.rnn_forward("lstm", np.zeros((2, 3, 4), np.float32), w, u, b, y, ws)
    with pytest.raises(TypeError, match="float32"):
        k.rnn_forward("lstm", x.astype(cp.float64), w, u, b, y, ws)
    with pytest.raises(ValueError, match="3-D"):
        k.rnn_forward("lstm", x[0], w, u, b, y, ws)
    with pytest.raises(ValueError, match=r"'w' must have shape \(4, 20\), got \(3, 20\)"):
        k.rnn_forward("lstm", x, w[:3], u, b, y, ws)
    with pytest.raises(ValueError, match=r"'y' must have shape \(2, 5\), got \(2, 6\)"):
        k.rnn_forward("lstm", x, w, u, b, cp.zeros((2, 6), cp.float32), ws)
    with pytest.raises(ValueError, match="'ws' must hold at least"):
        k.rnn_forward("lstm", x, w, u, b, y, ws[:10])
    with pytest.raises(ValueError, match="contiguous"):
        k.rnn_forward("lstm", cp.zeros((2, 3, 8), cp.float32)[:, :, ::2], w, u, b, y, ws)
    with pytest.raises(ValueError, match="c0 is an LSTM state"):
        k.rnn_forward("gru", x, cp.zeros((4, 15), cp.float32), cp.zeros((5, 15), cp.float32), None,
                      y, cp.zeros(k.rnn_workspace_size("gru", 2, 3, 4, 5)[0], cp.float32), None, y)
    with pytest.raises(ValueError, match="unknown activation 'softmax'"):
        k.rnn_forward("lstm", x, w, u, b, y, ws, activation="softmax")
    sc = cp.zeros(sc_n, cp.float32)
    with pytest.raises(ValueError, match=r"'dw' must have shape \(4, 20\)"):
        k.rnn_backward("lstm", y, x, w, u, ws, sc, None, cp.zeros((5, 20), cp.float32), None, None)
    with pytest.raises(ValueError, match="'scratch' must hold at least"):
        k.rnn_backward("lstm", y, x, w, u, ws, sc[:5], None, None, None, None)
    with pytest.raises(ValueError, match="overlaps"):
        k.rnn_backward("lstm", y, x, w, u, ws, sc, None, None, None, None, y)
