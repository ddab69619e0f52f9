"""Recurrent layers for text models: masking (in the kernels, forward and backward), return_state,
go_backwards, Bidirectional and Masking.

- kernels: fast vs reference with odd masks on odd shapes, an all-ones mask equal to no mask,
  central finite differences (float64 arithmetic of the result) of the masked backward including
  the gradients of the final states, bad arguments
- layers vs Keras 3 (jax backend, same weights): outputs and every gradient (inputs, weights,
  initial states) for SimpleRNN / LSTM / GRU and Bidirectional with masks, return_state,
  go_backwards, zero_output_for_mask, merge modes; Masking
- vs torch: bidirectional nn.LSTM / nn.GRU on equal lengths, and on right-padded (packed)
  sequences against a masked Bidirectional
- .h5 round trips (kilnet <-> Keras 3) of Bidirectional and masked RNNs; a Bidirectional LSTM
  classifier on one-hot token data reaching Keras 3's accuracy on the same program
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HAVE_TORCH, assert_grad_close, numeric_grad, rand
import kilnet
from kilnet import _cpu
from kilnet.engine.tape import GradientTape
from kilnet.engine.tensor import Tensor
from kilnet.layers import GRU, LSTM, Bidirectional, Dense, Masking, SimpleRNN
from kilnet.models import Sequential, load_model

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
CELLS = list(GATES)
LAYERS = {"simple_rnn": SimpleRNN, "lstm": LSTM, "gru": GRU}


def odd_mask(B, T, seed=0):
    """Masks with the patterns that matter: leading, trailing and inner gaps, a row with every
    step masked, a row with none, random holes."""
    r = np.random.default_rng(seed)
    m = r.uniform(size=(B, T)) > 0.35
    pats = [np.ones(T, bool), np.zeros(T, bool), np.r_[np.zeros(min(2, T - 1), bool), np.ones(T - min(2, T - 1), bool)],
            np.r_[np.ones(T - min(2, T - 1), bool), np.zeros(min(2, T - 1), bool)], np.arange(T) % 2 == 1]
    for i, p in enumerate(pats[:B]):
        m[i] = p
    return m


# ---------------------------------------------------------------------------------- kernel helpers
def problem(cell, B, T, I, H, seed=0, states=True):
    r = np.random.default_rng(seed)
    g = GATES[cell] * H
    p = {"x": rand(r, B, T, I), "w": rand(r, I, g, lo=-0.5, hi=0.5), "u": rand(r, H, g, lo=-0.5, hi=0.5),
         "b": rand(r, *((2, g) if cell == "gru" else (g,)), lo=-0.5, hi=0.5), "h0": None, "c0": None}
    if states:
        p["h0"] = rand(r, B, H)
        if cell == "lstm":
            p["c0"] = rand(r, B, H)
    return p


def k_forward(mod, cell, p, seq, back, mask, zero, last=True):
    B, T, I = p["x"].shape
    H = p["u"].shape[0]
    ws = np.full(mod.rnn_workspace_size(cell, B, T, I, H)[0], np.nan, np.float32)
    y = np.full((B, T, H) if seq else (B, H), np.nan, np.float32)
    hl = np.full((B, H), np.nan, np.float32) if last else None
    cl = np.full((B, H), np.nan, np.float32) if last and cell == "lstm" else None
    mk = None if mask is None else mask.astype(np.float32)
    mod.rnn_forward(cell, p["x"], p["w"], p["u"], p["b"], y, ws, p["h0"], p["c0"], "tanh", "sigmoid", back,
                    mask=mk, zero_output_for_mask=zero, h_last=hl, c_last=cl)
    return y, ws, hl, cl


def k_backward(mod, cell, p, ws, dy, back, mask, zero, dhl=None, dcl=None):
    B, T, I = p["x"].shape
    H = p["u"].shape[0]
    sc = np.full(mod.rnn_workspace_size(cell, B, T, I, H)[1], np.nan, np.float32)
    g = {"x": np.full_like(p["x"], np.nan), "w": np.zeros_like(p["w"]), "u": np.zeros_like(p["u"]),
         "b": np.zeros_like(p["b"]),
         "h0": np.full((B, H), np.nan, np.float32) if p["h0"] is not None else None,
         "c0": np.full((B, H), np.nan, np.float32) if p["c0"] is not None else None}
    mk = None if mask is None else mask.astype(np.float32)
    mod.rnn_backward(cell, dy, p["x"], p["w"], p["u"], ws, sc, g["x"], g["w"], g["u"], g["b"], g["h0"], g["c0"],
                     "tanh", "sigmoid", back, mask=mk, zero_output_for_mask=zero, dh_last=dhl, dc_last=dcl)
    return {k: v for k, v in g.items() if v is not None}


OPTIONS = [(seq, back, zero) for seq in (False, True) for back in (False, True) for zero in (False, True)]


# ---------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B,T,I,H", [(5, 7, 3, 9), (13, 6, 5, 33), (26, 9, 20, 40), (1, 1, 2, 3), (6, 4, 1, 17)])
def test_masked_fast_matches_reference(cell, B, T, I, H):
    """Fast vs naive kernels under masks with leading/trailing/inner gaps and fully masked rows,
    every option, with the final states out and their gradients in."""
    for i, (seq, back, zero) in enumerate(OPTIONS):
        p = problem(cell, B, T, I, H, seed=B + T + i, states=i % 2 == 0)
        mask = odd_mask(B, T, seed=i)
        yf, wsf, hf, cf = k_forward(_cpu, cell, p, seq, back, mask, zero)
        yr, wsr, hr, cr = k_forward(_cpu.ref, cell, p, seq, back, mask, zero)
        np.testing.assert_allclose(yf, yr, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(hf, hr, rtol=1e-5, atol=1e-5)
        if cell == "lstm":
            np.testing.assert_allclose(cf, cr, rtol=1e-5, atol=1e-5)
        r = np.random.default_rng(i)
        dy = rand(r, *yf.shape)
        dhl = rand(r, B, H) if i % 3 else None
        dcl = rand(r, B, H) if cell == "lstm" and i % 2 else None
        gf = k_backward(_cpu, cell, p, wsf, dy, back, mask, zero, dhl, dcl)
        gr = k_backward(_cpu.ref, cell, p, wsr, dy, back, mask, zero, dhl, dcl)
        for k in gf:
            scale = max(1.0, float(np.abs(gr[k]).max()))
            np.testing.assert_allclose(gf[k], gr[k], rtol=1e-4, atol=2e-5 * scale, err_msg=f"{cell} {k} {i}")


@pytest.mark.parametrize("cell", CELLS)
def test_mask_semantics_in_the_kernel(cell):
    """Masked steps carry the states; the output there is h_{t-1} (0 with zero_output_for_mask);
    an all-ones mask gives exactly the unmasked results; x at masked steps has no effect and
    gets a zero gradient."""
    B, T, H = 6, 7, 5
    p = problem(cell, B, T, 3, H, seed=3)
    mask = odd_mask(B, T, seed=5)
    y, ws, hl, cl = k_forward(_cpu, cell, p, True, False, mask, False)
    y0, *_ = k_forward(_cpu, cell, p, True, False, mask, True)
    for b in range(B):
        prev = p["h0"][b]
        for t in range(T):
            if not mask[b, t]:
                np.testing.assert_array_equal(y[b, t], prev)
                np.testing.assert_array_equal(y0[b, t], 0)
            else:
                np.testing.assert_array_equal(y0[b, t], y[b, t])
            prev = y[b, t]
        np.testing.assert_array_equal(hl[b], prev)
    assert np.array_equal(y[1], np.broadcast_to(p["h0"][1], (T, H)))   # row 1: every step masked
    ones = np.ones((B, T), bool)
    ym, wsm, hm, _ = k_forward(_cpu, cell, p, True, True, ones, True)
    yn, wsn, _, _ = k_forward(_cpu, cell, p, True, True, None, False, last=False)
    np.testing.assert_array_equal(ym, yn)
    np.testing.assert_array_equal(hm, yn[:, -1])
    dy = rand(np.random.default_rng(0), *ym.shape)
    gm = k_backward(_cpu, cell, p, wsm, dy, True, ones, True)
    gn = k_backward(_cpu, cell, p, wsn, dy, True, None, False)
    for k in gm:
        np.testing.assert_allclose(gm[k], gn[k], rtol=1e-6, atol=1e-6)
    g = k_backward(_cpu, cell, p, ws, rand(np.random.default_rng(1), *y.shape), False, mask, False)
    assert np.all(g["x"][~mask] == 0)
    x2 = dict(p, x=np.where(mask[..., None], p["x"], 7.0).astype(np.float32))
    np.testing.assert_array_equal(k_forward(_cpu, cell, x2, True, False, mask, False)[0], y)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("seq,back,zero", [(True, False, False), (False, True, False), (True, True, True),
                                           (False, False, True)])
def test_masked_kernel_gradients_by_finite_differences(cell, seq, back, zero):
    """Central differences of sum(y dy) + sum(h_last dh) (+ sum(c_last dc)) wrt x, W, U, b, h0,
    c0, through masked steps (states carried, gradients passed straight through)."""
    B, T, H = 3, 6, 3
    p = problem(cell, B, T, 2, H, seed=11)
    mask = np.array([[1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1], [0, 0, 0, 0, 0, 0]], bool)
    r = np.random.default_rng(2)
    y, ws, hl, cl = k_forward(_cpu, cell, p, seq, back, mask, zero)
    dy, dhl = rand(r, *y.shape), rand(r, B, H)
    dcl = rand(r, B, H) if cell == "lstm" else None
    g = k_backward(_cpu, cell, p, ws, dy, back, mask, zero, dhl, dcl)

    def f():
        y, _, hl, cl = k_forward(_cpu, cell, p, seq, back, mask, zero)
        v = (y.astype(np.float64) * dy).sum() + (hl.astype(np.float64) * dhl).sum()
        return v + ((cl.astype(np.float64) * dcl).sum() if dcl is not None else 0.0)
    for k in ("x", "w", "u", "b", "h0") + (("c0",) if cell == "lstm" else ()):
        assert_grad_close(g[k], numeric_grad(f, p[k]))


def test_masked_results_do_not_depend_on_thread_count():
    code = """
import numpy as np, sys
sys.path.insert(0, %r)
import test_rnn_seq as t
from kilnet import _cpu
out = []
for cell in t.CELLS:
    p = t.problem(cell, 48, 9, 24, 40, seed=1)
    m = t.odd_mask(48, 9, seed=2)
    y, ws, h, c = t.k_forward(_cpu, cell, p, True, True, m, False)
    g = t.k_backward(_cpu, cell, p, ws, np.ones_like(y), True, m, False, np.ones_like(h))
    out += [y, h] + [g[k] for k in sorted(g)]
np.save(sys.argv[1], np.concatenate([a.ravel() for a in out]))
""" % os.path.dirname(__file__)
    res = []
    for n in ("1", "2"):
        path = f"/tmp/kilnet_rnn_seq_threads_{os.getpid()}_{n}.npy"
        r = subprocess.run([sys.executable, "-c", code, path], env=dict(os.environ, OMP_NUM_THREADS=n),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        res.append(np.load(path))
        os.remove(path)
    np.testing.assert_array_equal(res[0], res[1])


def test_kernel_rejects_bad_masks_and_states():
    p = problem("gru", 3, 4, 2, 5)
    B, T, I, H = 3, 4, 2, 5
    ws = np.zeros(_cpu.rnn_workspace_size("gru", B, T, I, H)[0], np.float32)
    y = np.zeros((B, H), np.float32)

    def fwd(**kw):
        _cpu.rnn_forward("gru", p["x"], p["w"], p["u"], p["b"], y, ws, **kw)
    with pytest.raises(ValueError, match=r"'mask' must have shape \(batch, timesteps\) = \(3, 4\), got \(4, 3\)"):
        fwd(mask=np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="'mask' must have dtype float32"):
        fwd(mask=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="c_last is an LSTM state"):
        fwd(c_last=np.zeros((B, H), np.float32))
    with pytest.raises(ValueError, match=r"'h_last' must have shape \(3, 5\)"):
        fwd(h_last=np.zeros((B, H + 1), np.float32))
    with pytest.raises(ValueError, match="'y' overlaps .*'h_last'"):
        fwd(h_last=y)
    fwd(mask=np.ones((3, 4), np.float32))
    sc = np.zeros(_cpu.rnn_workspace_size("gru", B, T, I, H)[1], np.float32)
    with pytest.raises(ValueError, match="dc_last is an LSTM state"):
        _cpu.rnn_backward("gru", y, p["x"], p["w"], p["u"], ws, sc, None, None, None, None, dc_last=y)
    with pytest.raises(ValueError, match=r"'dh_last' must have shape \(3, 5\)"):
        _cpu.rnn_backward("gru", y, p["x"], p["w"], p["u"], ws, sc, None, None, None, None,
                          dh_last=np.zeros((2, 5), np.float32))


# ---------------------------------------------------------------------------------- Keras 3 reference
# One subprocess (KERAS_BACKEND=jax) computes every case: outputs with the given weights, and the
# gradients of sum_i <output_i, dy_i> wrt the weights, the input and the initial states.
KERAS_SCRIPT = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np
import jax, jax.numpy as jnp
import keras
from keras import layers as L
spec = json.load(open(sys.argv[1]))
arr = dict(np.load(sys.argv[2]))
res = {}
for i, c in enumerate(spec):
    g = lambda k: arr[f"c{i}_{k}"]
    x = g("x")
    if c["kind"] == "masking":
        layer = L.Masking(c["mask_value"])
        res[f"c{i}_out0"] = np.asarray(layer(x))
        res[f"c{i}_mask"] = np.asarray(layer.compute_mask(x))
        continue
    inner = getattr(L, c["cls"])(c["units"], **c["kw"])
    layer = L.Bidirectional(inner, merge_mode=c["merge_mode"]) if c["kind"] == "bidir" else inner
    layer.build(x.shape)
    layer.set_weights([g(f"w{j}") for j in range(c["n_weights"])])
    mask = jnp.asarray(g("mask")) if c["mask"] else None
    states = [jnp.asarray(g(f"s{j}")) for j in range(c["n_states"])] or None
    dys = [jnp.asarray(g(f"dy{j}")) for j in range(c["n_out"])]
    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]
    assert [tuple(v.shape) for v in tv] == [w.shape for w in layer.get_weights()]
    def f(tv, x, states):
        kw = {}
        if mask is not None: kw["mask"] = mask
        if states is not None: kw["initial_state"] = states
        o, _ = layer.stateless_call(tv, ntv, x, **kw)
        o = list(o) if isinstance(o, (list, tuple)) else [o]
        return sum(jnp.sum(a * d) for a, d in zip(o, dys)), o
    (_, outs), (gw, gx, gs) = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(tv, jnp.asarray(x), states)
    assert len(outs) == c["n_out"], (len(outs), c)
    for j, o in enumerate(outs): res[f"c{i}_out{j}"] = np.asarray(o)
    for j, w in enumerate(gw): res[f"c{i}_gw{j}"] = np.asarray(w)
    res[f"c{i}_gx"] = np.asarray(gx)
    for j, s in enumerate(gs or []): res[f"c{i}_gs{j}"] = np.asarray(s)
np.savez(sys.argv[3], **res)
"""


def _keras_env():
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}


def _have_keras():
    return subprocess.run([sys.executable, "-c", "import keras, jax"], capture_output=True,
                          env=_keras_env()).returncode == 0


def _kilnet_layer(c):
    inner = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}[c["cls"]](c["units"], **c["kw"])
    return Bidirectional(inner, merge_mode=c["merge_mode"]) if c["kind"] == "bidir" else inner


def _cases():
    """(spec, arrays): the configurations compared with Keras 3."""
    spec, arrays = [], {}
    rng = np.random.default_rng(42)
    B, T, I, H = 5, 7, 3, 4

    def add(kind, cls, kw, mask=True, states=False, merge_mode="concat"):
        c = {"kind": kind, "cls": cls, "units": H, "kw": kw, "merge_mode": merge_mode, "mask": mask}
        i = len(spec)
        layer = _kilnet_layer(c)
        layer._build((None, T, I))
        ws = [rand(rng, *w.shape, lo=-0.6, hi=0.6) for w in layer.get_weights()]
        x = rand(rng, B, T, I)
        n_per = 2 if cls == "LSTM" else 1
        n_states = (2 * n_per if kind == "bidir" else n_per) if states else 0
        shapes = layer.compute_output_shape((B, T, I))
        shapes = shapes if isinstance(shapes, list) else [shapes]
        c.update(n_weights=len(ws), n_states=n_states, n_out=len(shapes))
        arrays[f"c{i}_x"] = x
        if mask:
            arrays[f"c{i}_mask"] = odd_mask(B, T, seed=i)
        for j, w in enumerate(ws):
            arrays[f"c{i}_w{j}"] = w
        for j in range(n_states):
            arrays[f"c{i}_s{j}"] = rand(rng, B, H)
        for j, s in enumerate(shapes):
            arrays[f"c{i}_dy{j}"] = rand(rng, *s)
        spec.append(c)

    for cls in ("SimpleRNN", "LSTM", "GRU"):
        for seq, back, zero in OPTIONS:
            add("rnn", cls, {"return_sequences": seq, "go_backwards": back, "zero_output_for_mask": zero,
                             "return_state": back != zero}, states=seq != back)
        add("rnn", cls, {"return_sequences": True, "return_state": True}, mask=False, states=True)
    for cls in ("LSTM", "GRU"):
        for merge in ("concat", "sum", "mul", "ave", None):
            add("bidir", cls, {"return_sequences": merge in ("concat", None, "mul")}, merge_mode=merge)
        add("bidir", cls, {"return_sequences": True, "return_state": True}, states=True)
        add("bidir", cls, {"return_sequences": False, "return_state": True}, merge_mode=None, mask=False)
    add("bidir", "SimpleRNN", {"return_sequences": True}, merge_mode="ave", states=True)
    x = rand(rng, B, T, I)
    x[odd_mask(B, T, seed=9)] = 0.0
    x[0, 3, 1] = 0.0                   # one zero feature alone does not mask a step
    arrays[f"c{len(spec)}_x"] = x
    spec.append({"kind": "masking", "mask_value": 0.0})
    return spec, arrays


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    if not _have_keras():
        pytest.skip("keras 3 with the jax backend is not installed")
    d = tmp_path_factory.mktemp("keras_rnn_seq")
    spec, arrays = _cases()
    (d / "spec.json").write_text(json.dumps(spec))
    np.savez(d / "in.npz", **arrays)
    (d / "k.py").write_text(KERAS_SCRIPT)
    r = subprocess.run([sys.executable, str(d / "k.py"), str(d / "spec.json"), str(d / "in.npz"), str(d / "out.npz")],
                       capture_output=True, text=True, timeout=900, env=_keras_env())
    assert r.returncode == 0, r.stderr[-4000:]
    return spec, arrays, dict(np.load(d / "out.npz"))


def _kilnet_case(c, i, arrays):
    """kilnet's outputs and gradients for case i, through the public call and GradientTape."""
    g = lambda k: arrays[f"c{i}_{k}"]
    layer = _kilnet_layer(c)
    layer._build((None, *g("x").shape[1:]))
    layer.set_weights([g(f"w{j}") for j in range(c["n_weights"])])
    x = Tensor(g("x").copy())
    states = [Tensor(g(f"s{j}").copy()) for j in range(c["n_states"])]
    kw = {"mask": g("mask")} if c["mask"] else {}
    if states:
        kw["initial_state"] = states
    variables = layer.trainable_variables
    with GradientTape() as tape:
        tape.watch([x] + states)
        outs = layer(x, **kw)
        outs = outs if isinstance(outs, list) else [outs]
        loss = None
        for j, o in enumerate(outs):
            term = kilnet.ops.sum(o * Tensor(g(f"dy{j}")))
            loss = term if loss is None else loss + term
    grads = tape.gradient(loss, [x] + states + variables)
    return [o.numpy() for o in outs], grads[0], grads[1:1 + len(states)], grads[1 + len(states):]


def _close(a, b, what):
    a = np.zeros_like(b) if a is None else np.asarray(a.numpy() if hasattr(a, "numpy") else a)
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * scale, err_msg=what)


def test_layers_match_keras3(keras_results):
    """Every case: outputs (masked steps included), dx, every weight gradient and the initial
    states' gradients equal Keras 3's given the same weights."""
    spec, arrays, res = keras_results
    for i, c in enumerate(spec):
        if c["kind"] == "masking":
            continue
        what = f"case {i}: {c}"
        outs, gx, gs, gw = _kilnet_case(c, i, arrays)
        assert len(outs) == c["n_out"], what
        for j, o in enumerate(outs):
            np.testing.assert_allclose(o, res[f"c{i}_out{j}"], rtol=1e-5, atol=2e-6, err_msg=f"out{j} {what}")
        _close(gx, res[f"c{i}_gx"], f"dx {what}")
        for j in range(c["n_states"]):
            _close(gs[j], res[f"c{i}_gs{j}"], f"dstate{j} {what}")
        for j in range(c["n_weights"]):
            _close(gw[j], res[f"c{i}_gw{j}"], f"dweight{j} {what}")


def test_masking_layer_matches_keras3(keras_results):
    spec, arrays, res = keras_results
    i = next(k for k, c in enumerate(spec) if c["kind"] == "masking")
    x = arrays[f"c{i}_x"]
    layer = Masking(0.0)
    y = layer(x)
    np.testing.assert_array_equal(y.numpy(), res[f"c{i}_out0"])
    np.testing.assert_array_equal(layer.compute_mask(x), res[f"c{i}_mask"])
    xt = Tensor(x.copy())
    with GradientTape() as tape:
        tape.watch(xt)
        loss = kilnet.ops.sum(layer(xt) * 3.0)
    np.testing.assert_array_equal(tape.gradient(loss, xt).numpy(), 3.0 * res[f"c{i}_mask"][..., None] * np.ones_like(x))


# ---------------------------------------------------------------------------------- PyTorch parity
def _to_torch_params(cell, layer):
    """(W_ih, W_hh, b_ih, b_hh) in torch's layout from a kilnet LSTM/GRU's Keras weights."""
    H = layer.units
    W, U = layer.kernel.T, layer.recurrent_kernel.T
    if cell == "lstm":
        return W, U, layer.bias, np.zeros(4 * H, np.float32)
    perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]          # torch r z n <- Keras z r h
    return W[perm], U[perm], layer.bias[0][perm], layer.bias[1][perm]


def _torch_bidirectional(cell, bi, torch):
    H, I = bi.forward_layer.units, bi.forward_layer.kernel.shape[0]
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for sub, suffix in ((bi.forward_layer, ""), (bi.backward_layer, "_reverse")):
            for name, v in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), _to_torch_params(cell, sub)):
                getattr(mod, name + suffix).copy_(torch.from_numpy(np.ascontiguousarray(v)))
    return mod


def _torch_weight_grads(cell, mod, suffix, H):
    gw, gu = getattr(mod, "weight_ih_l0" + suffix).grad.numpy().T, getattr(mod, "weight_hh_l0" + suffix).grad.numpy().T
    gbi, gbh = getattr(mod, "bias_ih_l0" + suffix).grad.numpy(), getattr(mod, "bias_hh_l0" + suffix).grad.numpy()
    if cell == "gru":
        perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
        return [gw[:, perm], gu[:, perm], np.stack([gbi[perm], gbh[perm]])]
    return [gw, gu, gbi]


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("packed", [False, True])
def test_bidirectional_matches_torch(cell, packed):
    """Bidirectional(return_sequences, return_state) vs torch's bidirectional nn.LSTM / nn.GRU:
    outputs, final states and every gradient. packed: right-padded sequences of odd lengths as a
    PackedSequence in torch, a mask in kilnet (padding outputs 0 in both)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    B, T, I, H = 6, 9, 5, 7
    bi = Bidirectional(LAYERS[cell](H, return_sequences=True, return_state=True))
    bi._build((None, T, I))
    for sub in (bi.forward_layer, bi.backward_layer):
        sub.bias[...] = rand(rng, *sub.bias.shape, lo=-0.5, hi=0.5)
    x = rand(rng, B, T, I)
    lengths = np.array([9, 1, 4, 7, 2, 9]) if packed else np.full(B, T)
    mask = np.arange(T)[None, :] < lengths[:, None]
    ns = 2 if cell == "lstm" else 1
    dy = rand(rng, B, T, 2 * H)
    dst = [rand(rng, B, H) for _ in range(2 * ns)]

    xt = Tensor(x.copy())
    with GradientTape() as tape:
        tape.watch(xt)
        outs = bi(xt, mask=mask if packed else None)
        loss = kilnet.ops.sum(outs[0] * Tensor(dy))
        for o, d in zip(outs[1:], dst):
            loss = loss + kilnet.ops.sum(o * Tensor(d))
    variables = bi.trainable_variables
    grads = tape.gradient(loss, [xt] + variables)

    mod = _torch_bidirectional(cell, bi, torch)
    xt_ = torch.from_numpy(x).requires_grad_()
    inp = xt_
    if packed:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt_, torch.from_numpy(lengths), batch_first=True,
                                                      enforce_sorted=False)
    out, st = mod(inp)
    if packed:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    st = st if cell == "lstm" else (st,)
    # kilnet's states: [h_fwd, (c_fwd,) h_bwd, (c_bwd)]; torch's: h_n (2, B, H) (and c_n)
    t_states = [s[d] for d in (0, 1) for s in st]
    t_loss = (out * torch.from_numpy(dy)).sum() + sum((s * torch.from_numpy(d)).sum() for s, d in zip(t_states, dst))
    t_loss.backward()
    np.testing.assert_allclose(outs[0].numpy(), out.detach().numpy(), rtol=1e-5, atol=2e-6)
    for o, s in zip(outs[1:], t_states):
        np.testing.assert_allclose(o.numpy(), s.detach().numpy(), rtol=1e-5, atol=2e-6)
    _close(grads[0], xt_.grad.numpy(), "dx")
    want = _torch_weight_grads(cell, mod, "", H) + _torch_weight_grads(cell, mod, "_reverse", H)
    for k, (g, w) in enumerate(zip(grads[1:], want)):
        _close(g, w, f"weight {k}")


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_go_backwards_returns_reversed_sequence_as_keras():
    """go_backwards: processed from the last step, and the returned sequence is in processing
    order (reversed), as Keras 3 returns it; the mask is read in the input's time order."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    layer = GRU(4, return_sequences=True, go_backwards=True)
    x = rand(rng, 3, 6, 2)
    lengths = np.array([6, 3, 1])
    mask = np.arange(6)[None] < lengths[:, None]
    y = layer(x, mask=mask).numpy()
    fwd = GRU(4, return_sequences=True)
    fwd._build((None, 6, 2))
    fwd.set_weights(layer.get_weights())
    for b, n in enumerate(lengths):   # skipping the padded tail = running on the reversed valid part
        want = fwd(x[b:b + 1, :n][:, ::-1].copy()).numpy()[0]
        np.testing.assert_allclose(y[b, 6 - n:], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(y[b, :6 - n], 0)     # before: carried zero state


# ---------------------------------------------------------------------------------- layers: API
def test_compute_mask_and_output_shapes():
    m = odd_mask(4, 5)
    assert LSTM(3, return_sequences=True).compute_mask(None, m) is m
    assert GRU(3).compute_mask(None, m) is None
    assert LSTM(3, return_sequences=True, return_state=True).compute_mask(None, m) == [m, None, None]
    assert SimpleRNN(3, return_state=True).compute_mask(None, m) == [None, None]
    assert Bidirectional(GRU(3, return_sequences=True)).compute_mask(None, m) is m
    assert Bidirectional(GRU(3, return_sequences=True), merge_mode=None).compute_mask(None, m) == [m, m]
    assert Bidirectional(GRU(3)).compute_mask(None, m) is None
    assert Bidirectional(LSTM(3, return_state=True)).compute_mask(None, m) == [None] * 5
    assert LSTM(3, return_state=True).compute_output_shape((None, 5, 2)) == [(None, 3), (None, 3), (None, 3)]
    assert Bidirectional(LSTM(3, return_sequences=True)).compute_output_shape((None, 5, 2)) == (None, 5, 6)
    assert Bidirectional(GRU(3, return_state=True), merge_mode=None).compute_output_shape((None, 5, 2)) == \
        [(None, 3), (None, 3), (None, 3), (None, 3)]
    x = np.zeros((2, 3, 4), np.float32)
    x[0, 1, 2] = 5.0
    x[1, 2] = 5.0
    np.testing.assert_array_equal(Masking().compute_mask(x), [[False, True, False], [False, False, True]])
    np.testing.assert_array_equal(Masking(5.0).compute_mask(x), [[True, True, True], [True, True, False]])
    lay = LSTM(2, unroll=True)     # accepted, no effect (the kernel loops over time either way)
    assert lay(np.ones((1, 3, 2), np.float32)).shape == (1, 2)


def test_bidirectional_structure_and_weights_argument():
    fwd = LSTM(3, return_sequences=True, name="enc")
    bi = Bidirectional(fwd)
    assert (bi.forward_layer.name, bi.backward_layer.name) == ("forward_enc", "backward_enc")
    assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
    assert bi.forward_layer.zero_output_for_mask and bi.backward_layer.zero_output_for_mask
    assert not Bidirectional(GRU(2)).forward_layer.zero_output_for_mask
    bi._build((None, 4, 2))
    ws = bi.get_weights()
    assert [w.shape for w in ws] == [(2, 12), (3, 12), (12,)] * 2
    assert [v.name for v in bi.trainable_variables] == ["kernel", "recurrent_kernel", "bias"] * 2
    new = [np.full(w.shape, k, np.float32) for k, w in enumerate(ws)]
    bi2 = Bidirectional(LSTM(3, return_sequences=True), weights=new)
    bi2(np.zeros((1, 4, 2), np.float32))
    for a, b in zip(bi2.get_weights(), new):
        np.testing.assert_array_equal(a, b)
    back = GRU(3, activation="relu", go_backwards=True, return_sequences=True)
    bi3 = Bidirectional(GRU(3, return_sequences=True), backward_layer=back)
    assert bi3.backward_layer is back
    cfg = bi3.get_config()
    assert cfg["layer"]["config"]["name"] == "forward_" + bi3.forward_layer.name[len("forward_"):]
    again = Bidirectional.from_config(cfg)
    assert again.backward_layer.activation == "relu" and again.backward_layer.go_backwards


def test_return_state_gradients_through_a_functional_encoder_decoder():
    """Encoder LSTM(return_state) -> its [h, c] as the decoder's initial_state (functional API):
    the tape's gradients wrt the encoder's weights and the inputs equal central differences."""
    rng = np.random.default_rng(3)
    enc_in, dec_in = kilnet.Input((5, 2)), kilnet.Input((4, 3))
    enc = LSTM(3, return_state=True)
    _, h, c = enc(enc_in)
    dec_out = LSTM(3, return_sequences=True, go_backwards=True)(dec_in, initial_state=[h, c])
    out = Dense(1)(dec_out)
    model = kilnet.Model([enc_in, dec_in], out)
    xe, xd = rand(rng, 2, 5, 2), rand(rng, 2, 4, 3)
    dy = rand(rng, 2, 4, 1)
    te, td = Tensor(xe), Tensor(xd)
    with GradientTape() as tape:
        tape.watch([te, td])
        loss = kilnet.ops.sum(model([te, td]) * Tensor(dy))
    g = tape.gradient(loss, [te, td] + enc.trainable_variables)
    f = lambda: float((model([xe, xd]).numpy().astype(np.float64) * dy).sum())
    assert_grad_close(g[0].numpy(), numeric_grad(f, xe))
    assert_grad_close(g[1].numpy(), numeric_grad(f, xd))
    for v, gv in zip(enc.trainable_variables, g[2:]):
        assert_grad_close(gv.numpy(), numeric_grad(f, getattr(enc, v._attr)))


def test_masked_layer_gradients_by_finite_differences():
    """Through the layer API: mask + return_state + initial_state, every gradient vs central
    differences."""
    rng = np.random.default_rng(5)
    for cls in (SimpleRNN, LSTM, GRU):
        layer = cls(3, return_sequences=True, return_state=True, go_backwards=cls is GRU,
                    zero_output_for_mask=cls is LSTM)
        x = rand(rng, 3, 5, 2)
        mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 1, 1], [0, 1, 1, 0, 0]], bool)
        states = [rand(rng, 3, 3) for _ in range(2 if cls is LSTM else 1)]
        layer(x, mask=mask)
        dys = [rand(rng, 3, 5, 3)] + [rand(rng, 3, 3) for _ in states]
        xt, st = Tensor(x), [Tensor(s) for s in states]
        with GradientTape() as tape:
            tape.watch([xt] + st)
            outs = layer(xt, mask=mask, initial_state=st)
            loss = kilnet.ops.sum(outs[0] * Tensor(dys[0]))
            for o, d in zip(outs[1:], dys[1:]):
                loss = loss + kilnet.ops.sum(o * Tensor(d))
        g = tape.gradient(loss, [xt] + st + layer.trainable_variables)

        def f():
            outs = layer(x, mask=mask, initial_state=states)
            return sum(float((o.numpy().astype(np.float64) * d).sum()) for o, d in zip(outs, dys))
        for arr, gv in zip([x] + states + [layer.kernel, layer.recurrent_kernel, layer.bias], g):
            assert_grad_close(gv.numpy(), numeric_grad(f, arr))


def test_layer_bad_inputs():
    x = np.zeros((2, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"mask must have shape \(batch, timesteps\) = \(2, 4\) .* got mask of shape \(2, 5\)"):
        LSTM(2)(x, mask=np.ones((2, 5), bool))
    with pytest.raises(ValueError, match=r"got mask of shape \(2, 4, 1\)"):
        GRU(2)(x, mask=np.ones((2, 4, 1), bool))
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        SimpleRNN(2)(x, mask=np.array([["a"] * 4] * 2))
    with pytest.raises(ValueError, match="stateful=True is not supported"):
        LSTM(2, stateful=True)
    with pytest.raises(ValueError, match="initial_state must hold 2"):
        LSTM(2)(x, initial_state=[np.zeros((2, 2), np.float32)])
    with pytest.raises(ValueError, match="invalid merge_mode 'max'"):
        Bidirectional(LSTM(2), merge_mode="max")
    with pytest.raises(ValueError, match="layer must be a SimpleRNN, LSTM or GRU layer, got Dense"):
        Bidirectional(Dense(2))
    with pytest.raises(ValueError, match="different go_backwards"):
        Bidirectional(LSTM(2), backward_layer=LSTM(2))
    with pytest.raises(ValueError, match="same return_sequences"):
        Bidirectional(LSTM(2), backward_layer=LSTM(2, go_backwards=True, return_sequences=True))
    with pytest.raises(ValueError, match=r"initial_state must hold 4 arrays"):
        Bidirectional(LSTM(2))(x, initial_state=[np.zeros((2, 2), np.float32)] * 2)
    with pytest.raises(ValueError, match="mask_value must be a number"):
        Masking("x")
    with pytest.raises(ValueError, match="expects 3-D input"):
        Bidirectional(GRU(2))(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------------------------- saving
def test_h5_round_trip_of_bidirectional_and_masked_rnns(tmp_path):
    rng = np.random.default_rng(0)
    m = Sequential([kilnet.Input((6, 3)), Masking(), Bidirectional(LSTM(4, return_sequences=True)),
                    Bidirectional(GRU(3, return_sequences=True, go_backwards=True), merge_mode="ave",
                                  backward_layer=GRU(3, return_sequences=True, activation="relu")),
                    SimpleRNN(2, zero_output_for_mask=True), Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    x = rand(rng, 8, 6, 3)
    m.fit(x, rand(rng, 8, 1), epochs=2, verbose=0)
    m.save(tmp_path / "m.h5")
    m2 = load_model(tmp_path / "m.h5")
    assert [type(l).__name__ for l in m2.layers] == ["Masking", "Bidirectional", "Bidirectional", "SimpleRNN", "Dense"]
    assert m2.layers[3].zero_output_for_mask and m2.layers[2].merge_mode == "ave"
    assert not m2.layers[2].backward_layer.go_backwards and m2.layers[2].forward_layer.go_backwards
    assert m2.layers[2].backward_layer.activation == "relu"
    np.testing.assert_array_equal(m2.predict(x), m.predict(x))
    assert m2.optimizer.iterations == m.optimizer.iterations

    def masked(model, x):     # the mask passed by hand (the engine does not propagate it yet)
        mk = model.layers[0].compute_mask(x)
        h = model.layers[0](x)
        for layer in model.layers[1:4]:
            h, mk = layer(h, mask=mk), layer.compute_mask(h, mk)
        return model.layers[4](h).numpy()
    xp = x.copy()
    xp[odd_mask(8, 6, seed=1)] = 0.0
    np.testing.assert_array_equal(masked(m2, xp), masked(m, xp))
    m2.fit(x, rand(rng, 8, 1), epochs=1, verbose=0)    # training resumes from the saved state


KERAS_H5_SCRIPT = r"""
import os, sys, numpy as np
os.environ["KERAS_BACKEND"] = "jax"
import keras
from keras import layers as L
mode, path, xpath, out = sys.argv[1:5]
x = np.load(xpath)
xp = x.copy(); xp[:, -2:] = 0.0; xp[1, :3] = 0.0
if mode == "write":
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input(x.shape[1:]), L.Masking(), L.Bidirectional(L.LSTM(5, return_sequences=True)),
                          L.Bidirectional(L.GRU(3), merge_mode="sum"), L.Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.fit(x, np.arange(len(x)) % 2, epochs=2, verbose=0)
    m.save(path)
else:
    m = keras.models.load_model(path)
    print("iterations", int(m.optimizer.iterations))
np.savez(out, plain=m.predict(x, verbose=0), padded=m.predict(xp, verbose=0))
"""


def _keras_h5(tmp_path, mode, path, x):
    if not _have_keras():
        pytest.skip("keras 3 with the jax backend is not installed")
    (tmp_path / "kh5.py").write_text(KERAS_H5_SCRIPT)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([sys.executable, str(tmp_path / "kh5.py"), mode, str(path), str(tmp_path / "x.npy"),
                        str(tmp_path / "p.npz")], capture_output=True, text=True, timeout=600, env=_keras_env())
    assert r.returncode == 0, r.stderr[-4000:]
    return dict(np.load(tmp_path / "p.npz")), r.stdout


def test_keras3_bidirectional_files_both_ways(tmp_path):
    """Keras 3 writes Masking + Bidirectional(LSTM) + Bidirectional(GRU, sum): kilnet loads it with
    Keras's predictions (padded inputs too, the mask passed by hand); Keras 3 loads kilnet's file
    back (weights under forward_/backward_ paths, optimizer state) with kilnet's predictions."""
    x = np.random.default_rng(0).uniform(0.1, 1.0, size=(6, 7, 3)).astype(np.float32)
    xp = x.copy()
    xp[:, -2:] = 0.0
    xp[1, :3] = 0.0
    expected, _ = _keras_h5(tmp_path, "write", tmp_path / "keras.h5", x)
    m = load_model(tmp_path / "keras.h5")
    assert [type(l).__name__ for l in m.layers] == ["Masking", "Bidirectional", "Bidirectional", "Dense"]
    np.testing.assert_allclose(m.predict(x), expected["plain"], rtol=1e-5, atol=1e-6)
    mask = m.layers[0].compute_mask(xp)
    h = m.layers[1](m.layers[0](xp), mask=mask)
    h = m.layers[2](h, mask=m.layers[1].compute_mask(h, mask))
    np.testing.assert_allclose(m.layers[3](h).numpy(), expected["padded"], rtol=1e-5, atol=1e-6)
    m.fit(x, np.zeros(6), epochs=1, verbose=0)
    m.save(tmp_path / "kilnet.h5")
    got, out = _keras_h5(tmp_path, "read", tmp_path / "kilnet.h5", x)
    np.testing.assert_allclose(got["plain"], m.predict(x), rtol=1e-5, atol=1e-6)
    assert "iterations 3" in out


# ---------------------------------------------------------------------------------- a classifier
CLASSIFIER = r"""
import os, sys, numpy as np
lib = sys.argv[1]
if lib == "keras":
    os.environ["KERAS_BACKEND"] = "jax"
    import keras as K
    K.utils.set_random_seed(0)
else:
    import kilnet as K
    K.utils.set_random_seed(0)
# token sequences as one-hot floats; the label: is the first token the last one? (the forward
# direction ends next to the last token, the backward one next to the first)
r = np.random.default_rng(0)
V, T, N = 3, 8, 1200
tok = r.integers(0, V, size=(N, T))
y = (tok[:, 0] == tok[:, -1]).astype(np.int64)
x = np.eye(V, dtype=np.float32)[tok]
L = K.layers
m = K.Sequential([K.Input((T, V)), L.Bidirectional(L.LSTM(16)), L.Dense(2, activation="softmax")])
m.compile(optimizer=K.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
m.fit(x[:1000], y[:1000], epochs=12, batch_size=32, verbose=0)
print("accuracy", m.evaluate(x[1000:], y[1000:], verbose=0)[1])
"""


def test_bidirectional_lstm_classifier_reaches_keras3_accuracy(tmp_path):
    if not _have_keras():
        pytest.skip("keras 3 with the jax backend is not installed")
    (tmp_path / "c.py").write_text(CLASSIFIER)
    acc = {}
    for lib in ("kilnet", "keras"):
        r = subprocess.run([sys.executable, str(tmp_path / "c.py"), lib], capture_output=True, text=True,
                           timeout=600, env=_keras_env())
        assert r.returncode == 0, r.stderr[-3000:]
        acc[lib] = float(r.stdout.split("accuracy")[-1])
    assert acc["kilnet"] >= 0.9 and acc["kilnet"] >= acc["keras"] - 0.03, acc


# ---------------------------------------------------------------------------------- CUDA (needs a GPU)
@pytest.mark.cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B,T,I,H", [(5, 7, 3, 9), (1, 1, 2, 3), (13, 6, 5, 33)])
def test_cuda_masked_kernels_match_reference(gpu, cell, B, T, I, H):
    """kilnet._cuda's masked forward/backward (final states out, their gradients in) against
    the CPU reference, every option; outputs start as NaN."""
    cp, k = gpu.cp, gpu.k
    for i, (seq, back, zero) in enumerate(OPTIONS):
        p = problem(cell, B, T, I, H, seed=B + T + i, states=i % 2 == 0)
        mask = odd_mask(B, T, seed=i)
        yr, wsr, hr, cr = k_forward(_cpu.ref, cell, p, seq, back, mask, zero)
        r = np.random.default_rng(i)
        dy, dhl = rand(r, *yr.shape), rand(r, B, H)
        dcl = rand(r, B, H) if cell == "lstm" else None
        gr = k_backward(_cpu.ref, cell, p, wsr, dy, back, mask, zero, dhl, dcl)
        d = {n: gpu.dev(v) for n, v in p.items()}
        ws_n, sc_n = k.rnn_workspace_size(cell, B, T, I, H)
        ws, y = gpu.poisoned(ws_n), gpu.poisoned(yr.shape)
        hl = gpu.poisoned((B, H))
        cl = gpu.poisoned((B, H)) if cell == "lstm" else None
        dm = gpu.dev(mask.astype(np.float32))
        k.rnn_forward(cell, d["x"], d["w"], d["u"], d["b"], y, ws, d["h0"], d["c0"], "tanh", "sigmoid", back,
                      mask=dm, zero_output_for_mask=zero, h_last=hl, c_last=cl)
        np.testing.assert_allclose(gpu.host(y), yr, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(gpu.host(hl), hr, rtol=1e-4, atol=1e-5)
        if cell == "lstm":
            np.testing.assert_allclose(gpu.host(cl), cr, rtol=1e-4, atol=1e-5)
        g = {"x": gpu.poisoned(p["x"].shape), "w": cp.zeros(p["w"].shape, cp.float32),
             "u": cp.zeros(p["u"].shape, cp.float32), "b": cp.zeros(p["b"].shape, cp.float32),
             "h0": gpu.poisoned((B, H)) if p["h0"] is not None else None,
             "c0": gpu.poisoned((B, H)) if p["c0"] is not None else None}
        k.rnn_backward(cell, gpu.dev(dy), d["x"], d["w"], d["u"], ws, gpu.poisoned(sc_n), g["x"], g["w"], g["u"],
                       g["b"], g["h0"], g["c0"], "tanh", "sigmoid", back, mask=dm, zero_output_for_mask=zero,
                       dh_last=gpu.dev(dhl), dc_last=gpu.dev(dcl))
        for name in gr:
            scale = max(1.0, float(np.abs(gr[name]).max()))
            np.testing.assert_allclose(gpu.host(g[name]), gr[name], rtol=1e-4, atol=5e-5 * scale,
                                       err_msg=f"{cell} d{name} case {i}")
