// cpu_module.cpp — kilnet._cpu: array checks and bindings for the CPU kernels, nothing else.
// Every function validates its arrays (checks.h), then runs the kernel with the GIL released.
// kilnet._cpu.ref holds the same functions bound to the naive reference kernels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <array>
#include <string>
#include "checks.h"
#include "kilnet/activation.h"
#include "kilnet/conv2d.h"
#include "kilnet/gemm.h"
#include "kilnet/loss.h"
#include "kilnet/optim.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

Act parse_act(const std::string& name) {
  if (name == "linear") return Act::Linear;
  if (name == "relu") return Act::Relu;
  if (name == "sigmoid") return Act::Sigmoid;
  if (name == "tanh") return Act::Tanh;
  fail_value("unknown activation '" + name + "'; valid: linear, relu, sigmoid, tanh (softmax has its own functions)");
}

using Pair = std::array<index_t, 2>;

// Checks shared by the forward and backward convolution bindings; returns the shape.
Conv2dShape conv_shape(const char* fn, const Arr& x, const Arr& w, const Arr& y, Pair stride,
                       Pair pad, Pair dil) {
  for (int i = 0; i < 2; ++i) {
    if (stride[i] < 1) fail_value(std::string(fn) + ": strides must be >= 1");
    if (dil[i] < 1) fail_value(std::string(fn) + ": dilation must be >= 1");
    if (pad[i] < 0) fail_value(std::string(fn) + ": padding must be >= 0");
  }
  Conv2dShape s;
  s.N = x.dim(0); s.H = x.dim(1); s.W = x.dim(2); s.C = x.dim(3);
  s.R = w.dim(0); s.S = w.dim(1); s.K = w.dim(3);
  if (w.dim(2) != s.C)
    fail_value(std::string(fn) + ": weight 'w' has " + std::to_string(w.dim(2)) +
               " input channels but 'x' has " + std::to_string(s.C));
  s.stride_h = stride[0]; s.stride_w = stride[1];
  s.pad_h = pad[0]; s.pad_w = pad[1];
  s.dilation_h = dil[0]; s.dilation_w = dil[1];
  s.P = y.dim(1); s.Q = y.dim(2);
  // pad_h/pad_w are the top/left padding; P and Q imply the bottom/right padding, which may
  // be anything from none (rows left over, as in 'valid') up to eff-1 (no window lies wholly in
  // the padding). Reads outside the input are zeros, so every accepted P, Q is memory-safe.
  const index_t eff_r = (s.R - 1) * s.dilation_h + 1, eff_s = (s.S - 1) * s.dilation_w + 1;
  if (s.H + s.pad_h < 1 || s.pad_h >= eff_r + s.H || s.pad_w >= eff_s + s.W)
    fail_value(std::string(fn) + ": padding larger than the kernel extent");
  const index_t max_p = (s.H + s.pad_h - 1) / s.stride_h + 1;
  const index_t max_q = (s.W + s.pad_w - 1) / s.stride_w + 1;
  if (y.dim(0) != s.N || y.dim(3) != s.K || s.P < 1 || s.Q < 1 || s.P > max_p || s.Q > max_q)
    fail_value(std::string(fn) + ": output must have shape (" + std::to_string(s.N) + ", P<=" +
               std::to_string(max_p) + ", Q<=" + std::to_string(max_q) + ", " + std::to_string(s.K) +
               "), got " + shape_str(y.shape));
  return s;
}

// Leading axes flattened into rows, the last axis is cols.
std::pair<index_t, index_t> rows_cols(const char* fn, const Arr& a) {
  if (a.ndim() < 1) fail_value(std::string(fn) + ": expected an array of rank >= 1");
  const index_t cols = a.dim(-1);
  if (a.size == 0 || cols == 0) fail_value(std::string(fn) + ": empty input");
  return {a.size / cols, cols};
}

struct Kernels {   // the set of kernels one module binds: fast or reference
  decltype(&cpu::gemm) gemm;
  decltype(&cpu::bias_backward) bias_backward;
  decltype(&cpu::conv2d_forward) conv_fwd;
  decltype(&cpu::conv2d_backward) conv_bwd;
  decltype(&cpu::activation_forward) act_fwd;
  decltype(&cpu::activation_backward) act_bwd;
  decltype(&cpu::softmax_forward) sm_fwd;
  decltype(&cpu::softmax_backward) sm_bwd;
  decltype(&cpu::mse) mse;
  decltype(&cpu::mae) mae;
  decltype(&cpu::binary_crossentropy) bce;
  decltype(&cpu::categorical_crossentropy) cce;
  decltype(&cpu::sparse_categorical_crossentropy) scce;
  decltype(&cpu::softmax_crossentropy) smce;
  decltype(&cpu::sgd_update) sgd;
  decltype(&cpu::adam_update) adam;
};

void bind_kernels(py::module_& m, const Kernels K) {
  m.def("gemm", [K](py::object a_, py::object b_, py::object c_, bool trans_a, bool trans_b,
                    float alpha, float beta, py::object bias_) {
    const char* fn = "gemm";
    Arr a = in_f32(fn, "a", a_, 2), b = in_f32(fn, "b", b_, 2), c = out_f32(fn, "c", c_, 2);
    const index_t M = trans_a ? a.dim(1) : a.dim(0), Ka = trans_a ? a.dim(0) : a.dim(1);
    const index_t Kb = trans_b ? b.dim(1) : b.dim(0), N = trans_b ? b.dim(0) : b.dim(1);
    if (Ka != Kb)
      fail_value("gemm: inner dimensions differ: op(a) is " + shape_str({M, Ka}) + ", op(b) is " + shape_str({Kb, N}));
    expect_shape(fn, "c", c, {M, N});
    no_alias(fn, "c", c, "a", a); no_alias(fn, "c", c, "b", b);
    const float* bias = nullptr;
    Arr bb;
    if (!bias_.is_none()) {
      bb = in_f32(fn, "bias", bias_, 1);
      expect_shape(fn, "bias", bb, {N});
      no_alias(fn, "c", c, "bias", bb);
      bias = bb.f();
    }
    py::gil_scoped_release nogil;
    K.gemm(trans_a, trans_b, M, N, Ka, alpha, a.f(), a.dim(1), b.f(), b.dim(1), beta, c.f(), N, bias);
  }, arg("a"), arg("b"), arg("c"), arg("trans_a") = false, arg("trans_b") = false,
     arg("alpha") = 1.0f, arg("beta") = 0.0f, arg("bias") = py::none(),
     "c = alpha * op(a) @ op(b) + beta * c (+ bias). All float32, C-contiguous, c written in place.");

  m.def("bias_backward", [K](py::object dy_, py::object db_) {
    const char* fn = "bias_backward";
    Arr dy = in_f32(fn, "dy", dy_), db = out_f32(fn, "db", db_, 1);
    auto [rows, cols] = rows_cols(fn, dy);
    expect_shape(fn, "db", db, {cols});
    no_alias(fn, "db", db, "dy", dy);
    py::gil_scoped_release nogil;
    K.bias_backward(rows, cols, dy.f(), db.f());
  }, arg("dy"), arg("db"), "db += dy summed over all leading axes");

  m.def("conv2d_forward", [K](py::object x_, py::object w_, py::object b_, py::object y_,
                              Pair stride, Pair padding, Pair dilation) {
    const char* fn = "conv2d_forward";
    Arr x = in_f32(fn, "x", x_, 4), w = in_f32(fn, "w", w_, 4), y = out_f32(fn, "y", y_, 4);
    Conv2dShape s = conv_shape(fn, x, w, y, stride, padding, dilation);
    no_alias(fn, "y", y, "x", x); no_alias(fn, "y", y, "w", w);
    const float* bp = nullptr;
    Arr b;
    if (!b_.is_none()) { b = in_f32(fn, "b", b_, 1); expect_shape(fn, "b", b, {s.K}); no_alias(fn, "y", y, "b", b); bp = b.f(); }
    py::gil_scoped_release nogil;
    K.conv_fwd(s, x.f(), w.f(), bp, y.f());
  }, arg("x"), arg("w"), arg("b"), arg("y"), arg("stride") = Pair{1, 1},
     arg("padding") = Pair{0, 0}, arg("dilation") = Pair{1, 1},
     "y = conv2d(x NHWC, w RSCK) + b; padding is (top, left); y's shape gives P, Q");

  m.def("conv2d_backward", [K](py::object dy_, py::object x_, py::object w_, py::object dx_,
                               py::object dw_, py::object db_, Pair stride, Pair padding, Pair dilation) {
    const char* fn = "conv2d_backward";
    Arr dy = in_f32(fn, "dy", dy_, 4), x = in_f32(fn, "x", x_, 4), w = in_f32(fn, "w", w_, 4);
    Arr dw = out_f32(fn, "dw", dw_, 4);
    Conv2dShape s = conv_shape(fn, x, w, dy, stride, padding, dilation);
    expect_shape(fn, "dw", dw, w.shape);
    for (auto* in : {&dy, &x, &w}) no_alias(fn, "dw", dw, "an input", *in);
    float* dxp = nullptr; float* dbp = nullptr;
    Arr dx, db;
    if (!dx_.is_none()) {
      dx = out_f32(fn, "dx", dx_, 4); expect_shape(fn, "dx", dx, x.shape);
      for (auto* in : {&dy, &x, &w, &dw}) no_alias(fn, "dx", dx, "another argument", *in);
      dxp = dx.f();
    }
    if (!db_.is_none()) {
      db = out_f32(fn, "db", db_, 1); expect_shape(fn, "db", db, {s.K});
      for (auto* in : {&dy, &x, &w, &dw}) no_alias(fn, "db", db, "another argument", *in);
      dbp = db.f();
    }
    py::gil_scoped_release nogil;
    K.conv_bwd(s, dy.f(), x.f(), w.f(), dxp, dw.f(), dbp);
  }, arg("dy"), arg("x"), arg("w"), arg("dx"), arg("dw"), arg("db"), arg("stride") = Pair{1, 1},
     arg("padding") = Pair{0, 0}, arg("dilation") = Pair{1, 1},
     "dx = grad wrt x (overwritten, None to skip); dw += grad wrt w; db += grad wrt b (None to skip)");

  m.def("activation_forward", [K](const std::string& act, py::object x_, py::object y_) {
    const char* fn = "activation_forward";
    Act a = parse_act(act);
    Arr x = in_f32(fn, "x", x_), y = out_f32(fn, "y", y_);
    expect_shape(fn, "y", y, x.shape);
    if (y.data != x.data) no_alias(fn, "y", y, "x", x);   // exactly in place is fine
    py::gil_scoped_release nogil;
    K.act_fwd(a, x.size, x.f(), y.f());
  }, arg("act"), arg("x"), arg("y"), "y = act(x); y may be x itself");

  m.def("activation_backward", [K](const std::string& act, py::object y_, py::object dy_, py::object dx_) {
    const char* fn = "activation_backward";
    Act a = parse_act(act);
    Arr y = in_f32(fn, "y", y_), dy = in_f32(fn, "dy", dy_), dx = out_f32(fn, "dx", dx_);
    expect_shape(fn, "dy", dy, y.shape); expect_shape(fn, "dx", dx, y.shape);
    no_alias(fn, "dx", dx, "y", y);
    if (dx.data != dy.data) no_alias(fn, "dx", dx, "dy", dy);
    py::gil_scoped_release nogil;
    K.act_bwd(a, y.size, y.f(), dy.f(), dx.f());
  }, arg("act"), arg("y"), arg("dy"), arg("dx"), "dx = act'(.) * dy from the forward output y; dx may be dy");

  m.def("softmax_forward", [K](py::object x_, py::object y_) {
    const char* fn = "softmax_forward";
    Arr x = in_f32(fn, "x", x_), y = out_f32(fn, "y", y_);
    expect_shape(fn, "y", y, x.shape);
    if (y.data != x.data) no_alias(fn, "y", y, "x", x);
    auto [rows, cols] = rows_cols(fn, x);
    py::gil_scoped_release nogil;
    K.sm_fwd(rows, cols, x.f(), y.f());
  }, arg("x"), arg("y"), "softmax along the last axis");

  m.def("softmax_backward", [K](py::object y_, py::object dy_, py::object dx_) {
    const char* fn = "softmax_backward";
    Arr y = in_f32(fn, "y", y_), dy = in_f32(fn, "dy", dy_), dx = out_f32(fn, "dx", dx_);
    expect_shape(fn, "dy", dy, y.shape); expect_shape(fn, "dx", dx, y.shape);
    no_alias(fn, "dx", dx, "y", y);
    if (dx.data != dy.data) no_alias(fn, "dx", dx, "dy", dy);
    auto [rows, cols] = rows_cols(fn, y);
    py::gil_scoped_release nogil;
    K.sm_bwd(rows, cols, y.f(), dy.f(), dx.f());
  }, arg("y"), arg("dy"), arg("dx"));

  // Losses: pred and target of one shape; grad (optional) receives d(loss)/d(pred).
  auto pair_loss = [&m](const char* name, auto call) {
    m.def(name, [name, call](py::object p_, py::object t_, py::object g_) {
      Arr p = in_f32(name, "pred", p_), t = in_f32(name, "target", t_);
      expect_shape(name, "target", t, p.shape);
      auto [rows, cols] = rows_cols(name, p);
      float* g = nullptr;
      Arr ga;
      if (!g_.is_none()) {
        ga = out_f32(name, "grad", g_); expect_shape(name, "grad", ga, p.shape);
        no_alias(name, "grad", ga, "pred", p); no_alias(name, "grad", ga, "target", t);
        g = ga.f();
      }
      py::gil_scoped_release nogil;
      return call(rows, cols, p.f(), t.f(), g);
    }, arg("pred"), arg("target"), arg("grad") = py::none());
  };
  pair_loss("mse", [K](index_t r, index_t c, const float* p, const float* t, float* g) { return K.mse(r, c, p, t, g); });
  pair_loss("mae", [K](index_t r, index_t c, const float* p, const float* t, float* g) { return K.mae(r, c, p, t, g); });
  pair_loss("categorical_crossentropy", [K](index_t r, index_t c, const float* p, const float* t, float* g) { return K.cce(r, c, p, t, g); });

  m.def("binary_crossentropy", [K](py::object p_, py::object t_, bool from_logits, py::object g_) {
    const char* fn = "binary_crossentropy";
    Arr p = in_f32(fn, "pred", p_), t = in_f32(fn, "target", t_);
    expect_shape(fn, "target", t, p.shape);
    auto [rows, cols] = rows_cols(fn, p);
    float* g = nullptr;
    Arr ga;
    if (!g_.is_none()) {
      ga = out_f32(fn, "grad", g_); expect_shape(fn, "grad", ga, p.shape);
      no_alias(fn, "grad", ga, "pred", p); no_alias(fn, "grad", ga, "target", t);
      g = ga.f();
    }
    py::gil_scoped_release nogil;
    return K.bce(rows, cols, p.f(), t.f(), from_logits, g);
  }, arg("pred"), arg("target"), arg("from_logits") = false, arg("grad") = py::none());

  m.def("sparse_categorical_crossentropy", [K](py::object p_, py::object l_, py::object g_) {
    const char* fn = "sparse_categorical_crossentropy";
    Arr p = in_f32(fn, "pred", p_);
    auto [rows, cols] = rows_cols(fn, p);
    Arr l = array_arg(fn, "labels", l_, 'l', -1, false);
    if (l.size != rows) fail_value(std::string(fn) + ": 'labels' must have " + std::to_string(rows) + " entries, got " + std::to_string(l.size));
    for (index_t i = 0; i < rows; ++i)
      if (l.i64()[i] < 0 || l.i64()[i] >= cols)
        fail_value(std::string(fn) + ": label " + std::to_string(l.i64()[i]) + " at index " + std::to_string(i) + " is out of range [0, " + std::to_string(cols) + ")");
    float* g = nullptr;
    Arr ga;
    if (!g_.is_none()) {
      ga = out_f32(fn, "grad", g_); expect_shape(fn, "grad", ga, p.shape);
      no_alias(fn, "grad", ga, "pred", p); no_alias(fn, "grad", ga, "labels", l);
      g = ga.f();
    }
    py::gil_scoped_release nogil;
    return K.scce(rows, cols, p.f(), l.i64(), g);
  }, arg("pred"), arg("labels"), arg("grad") = py::none());

  m.def("softmax_crossentropy", [K](py::object x_, py::object l_, py::object t_, py::object pr_, py::object g_) {
    const char* fn = "softmax_crossentropy";
    Arr x = in_f32(fn, "logits", x_);
    auto [rows, cols] = rows_cols(fn, x);
    if (l_.is_none() == t_.is_none()) fail_value(std::string(fn) + ": pass exactly one of 'labels' and 'target'");
    Arr l, t, pr, g;
    const std::int64_t* lp = nullptr; const float* tp = nullptr; float* prp = nullptr; float* gp = nullptr;
    if (!l_.is_none()) {
      l = array_arg(fn, "labels", l_, 'l', -1, false);
      if (l.size != rows) fail_value(std::string(fn) + ": 'labels' must have " + std::to_string(rows) + " entries, got " + std::to_string(l.size));
      for (index_t i = 0; i < rows; ++i)
        if (l.i64()[i] < 0 || l.i64()[i] >= cols)
          fail_value(std::string(fn) + ": label " + std::to_string(l.i64()[i]) + " at index " + std::to_string(i) + " is out of range [0, " + std::to_string(cols) + ")");
      lp = l.i64();
    } else {
      t = in_f32(fn, "target", t_); expect_shape(fn, "target", t, x.shape); tp = t.f();
    }
    // Outputs overlap no input: the labels/target are read while probs and grad are written.
    if (!pr_.is_none()) {
      pr = out_f32(fn, "probs", pr_); expect_shape(fn, "probs", pr, x.shape);
      no_alias(fn, "probs", pr, "logits", x);
      if (lp) no_alias(fn, "probs", pr, "labels", l); else no_alias(fn, "probs", pr, "target", t);
      prp = pr.f();
    }
    if (!g_.is_none()) {
      g = out_f32(fn, "grad", g_); expect_shape(fn, "grad", g, x.shape); no_alias(fn, "grad", g, "logits", x);
      if (lp) no_alias(fn, "grad", g, "labels", l); else no_alias(fn, "grad", g, "target", t);
      if (prp) no_alias(fn, "grad", g, "probs", pr);
      gp = g.f();
    }
    py::gil_scoped_release nogil;
    return K.smce(rows, cols, x.f(), lp, tp, prp, gp);
  }, arg("logits"), arg("labels") = py::none(), arg("target") = py::none(), arg("probs") = py::none(),
     arg("grad") = py::none(), "fused softmax + cross-entropy on logits; grad = (softmax - onehot)/rows");

  m.def("sgd_update", [K](py::object p_, py::object g_, py::object v_, float lr, float momentum, bool nesterov) {
    const char* fn = "sgd_update";
    Arr p = out_f32(fn, "param", p_), g = in_f32(fn, "grad", g_);
    expect_shape(fn, "grad", g, p.shape);
    no_alias(fn, "param", p, "grad", g);
    float* vp = nullptr;
    Arr v;
    if (!v_.is_none()) { v = out_f32(fn, "velocity", v_); expect_shape(fn, "velocity", v, p.shape); no_alias(fn, "velocity", v, "param", p); no_alias(fn, "velocity", v, "grad", g); vp = v.f(); }
    else if (momentum != 0.f) fail_value("sgd_update: momentum != 0 needs a 'velocity' buffer");
    py::gil_scoped_release nogil;
    K.sgd(p.size, p.f(), g.f(), vp, lr, momentum, nesterov);
  }, arg("param"), arg("grad"), arg("velocity"), arg("lr"), arg("momentum") = 0.0f, arg("nesterov") = false);

  m.def("adam_update", [K](py::object p_, py::object g_, py::object m_, py::object v_, float lr,
                           float b1, float b2, float eps, index_t step) {
    const char* fn = "adam_update";
    Arr p = out_f32(fn, "param", p_), g = in_f32(fn, "grad", g_), mm = out_f32(fn, "m", m_), v = out_f32(fn, "v", v_);
    expect_shape(fn, "grad", g, p.shape); expect_shape(fn, "m", mm, p.shape); expect_shape(fn, "v", v, p.shape);
    no_alias(fn, "param", p, "grad", g); no_alias(fn, "m", mm, "param", p); no_alias(fn, "v", v, "param", p);
    no_alias(fn, "m", mm, "v", v); no_alias(fn, "m", mm, "grad", g); no_alias(fn, "v", v, "grad", g);
    if (step < 1) fail_value("adam_update: step counts from 1, got " + std::to_string(step));
    py::gil_scoped_release nogil;
    K.adam(p.size, p.f(), g.f(), mm.f(), v.f(), lr, b1, b2, eps, step);
  }, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"), arg("beta1") = 0.9f,
     arg("beta2") = 0.999f, arg("eps") = 1e-7f, arg("step") = 1);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "kilnet CPU kernels (C++, OpenMP, AVX2/FMA chosen at run time)";
#ifdef KILNET_VERSION
  m.attr("__version__") = KILNET_VERSION;
#endif
  m.def("simd_level", &cpu::simd_level, "'avx2' or 'scalar': the kernel path in use");
  m.def("get_num_threads", &cpu::get_num_threads);
  m.def("set_num_threads", &cpu::set_num_threads, arg("n"));
  m.def("build_info", &cpu::build_info);
  bind_kernels(m, Kernels{cpu::gemm, cpu::bias_backward, cpu::conv2d_forward, cpu::conv2d_backward,
                          cpu::activation_forward, cpu::activation_backward, cpu::softmax_forward,
                          cpu::softmax_backward, cpu::mse, cpu::mae, cpu::binary_crossentropy,
                          cpu::categorical_crossentropy, cpu::sparse_categorical_crossentropy,
                          cpu::softmax_crossentropy, cpu::sgd_update, cpu::adam_update});
  py::module_ ref = m.def_submodule("ref", "naive reference kernels: plain loops, for tests");
  bind_kernels(ref, Kernels{cpu::gemm_ref, cpu::bias_backward_ref, cpu::conv2d_forward_ref,
                            cpu::conv2d_backward_ref, cpu::activation_forward_ref,
                            cpu::activation_backward_ref, cpu::softmax_forward_ref,
                            cpu::softmax_backward_ref, cpu::mse_ref, cpu::mae_ref,
                            cpu::binary_crossentropy_ref, cpu::categorical_crossentropy_ref,
                            cpu::sparse_categorical_crossentropy_ref, cpu::softmax_crossentropy_ref,
                            cpu::sgd_update_ref, cpu::adam_update_ref});
}
