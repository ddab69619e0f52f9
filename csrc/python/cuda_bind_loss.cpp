// cuda_bind_loss.cpp — kilnet._cuda losses: the names and arguments of bind_loss.cpp, on CuPy
// arrays, plus out=None and stream=None. Without out each returns the mean loss as a float
// (this waits for the stream); with out (float32 CuPy array of shape (1,)) the loss is written
// there on the device, the call returns None and does not synchronize.
// The CPU binding's value-range checks (in_range: probabilities >= 0, targets in [0, 1], labels
// in [0, cols)) read host memory and cannot run on device arrays: they are skipped here, except
// the labels, which the kernels check on the device (NaN loss and gradient for a bad row, and
// ValueError from the value-returning form).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "cuda_checks.h"
#include "kilnet/loss.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

// The optional out: float32 device array of shape (1,), apart from every other argument.
float* out_arg(const char* fn, py::handle out_, Arr& o, std::initializer_list<Named> others) {
  if (out_.is_none()) return nullptr;
  o = dout_f32(fn, "out", out_);
  expect_shape(fn, "out", o, {1});
  for (const Named& a : others)
    if (a.second) no_alias(fn, "out", o, a.first, *a.second);
  return o.f();
}

py::object result(float* out, double v) {
  if (out) return py::none();
  return py::float_(v);
}

}  // namespace

static void cuda_bind_loss(py::module_& m) {
  // Losses: pred and target of one shape; grad (optional) receives d(loss)/d(pred).
  auto pair_loss = [&m](const char* name, auto call) {
    m.def(name, [name, call](py::object p_, py::object t_, py::object g_, py::object out_, py::object stream) {
      Arr p = din_f32(name, "pred", p_), t = din_f32(name, "target", t_);
      expect_shape(name, "target", t, p.shape);
      auto [rows, cols] = rows_cols(name, p);
      float* g = nullptr;
      Arr ga, o;
      if (!g_.is_none()) {
        ga = dout_f32(name, "grad", g_); expect_shape(name, "grad", ga, p.shape);
        no_alias(name, "grad", ga, "pred", p); no_alias(name, "grad", ga, "target", t);
        g = ga.f();
      }
      float* op = out_arg(name, out_, o, {{"pred", &p}, {"target", &t}, {"grad", g ? &ga : nullptr}});
      void* s = stream_arg(stream);
      double v;
      {
        py::gil_scoped_release nogil;
        v = call(rows, cols, p.f(), t.f(), g, op, s);
      }
      return result(op, v);
    }, arg("pred"), arg("target"), arg("grad") = py::none(), arg("out") = py::none(),
       arg("stream") = py::none());
  };
  pair_loss("mse", [](index_t r, index_t c, const float* p, const float* t, float* g, float* o, void* s) {
    return cuda::mse(r, c, p, t, g, o, s); });
  pair_loss("mae", [](index_t r, index_t c, const float* p, const float* t, float* g, float* o, void* s) {
    return cuda::mae(r, c, p, t, g, o, s); });
  pair_loss("categorical_crossentropy", [](index_t r, index_t c, const float* p, const float* t, float* g,
                                           float* o, void* s) {
    return cuda::categorical_crossentropy(r, c, p, t, g, o, s); });

  m.def("binary_crossentropy", [](py::object p_, py::object t_, bool from_logits, py::object g_,
                                  py::object out_, py::object stream) {
    const char* fn = "binary_crossentropy";
    Arr p = din_f32(fn, "pred", p_), t = din_f32(fn, "target", t_);
    expect_shape(fn, "target", t, p.shape);
    auto [rows, cols] = rows_cols(fn, p);
    float* g = nullptr;
    Arr ga, o;
    if (!g_.is_none()) {
      ga = dout_f32(fn, "grad", g_); expect_shape(fn, "grad", ga, p.shape);
      no_alias(fn, "grad", ga, "pred", p); no_alias(fn, "grad", ga, "target", t);
      g = ga.f();
    }
    float* op = out_arg(fn, out_, o, {{"pred", &p}, {"target", &t}, {"grad", g ? &ga : nullptr}});
    void* s = stream_arg(stream);
    double v;
    {
      py::gil_scoped_release nogil;
      v = cuda::binary_crossentropy(rows, cols, p.f(), t.f(), from_logits, g, op, s);
    }
    return result(op, v);
  }, arg("pred"), arg("target"), arg("from_logits") = false, arg("grad") = py::none(),
     arg("out") = py::none(), arg("stream") = py::none());

  m.def("sparse_categorical_crossentropy", [](py::object p_, py::object l_, py::object g_, py::object out_,
                                              py::object stream) {
    const char* fn = "sparse_categorical_crossentropy";
    Arr p = din_f32(fn, "pred", p_);
    auto [rows, cols] = rows_cols(fn, p);
    Arr l = din_i64(fn, "labels", l_);
    if (l.size != rows) fail_value(std::string(fn) + ": 'labels' must have " + std::to_string(rows) + " entries, got " + std::to_string(l.size));
    float* g = nullptr;
    Arr ga, o;
    if (!g_.is_none()) {
      ga = dout_f32(fn, "grad", g_); expect_shape(fn, "grad", ga, p.shape);
      no_alias(fn, "grad", ga, "pred", p); no_alias(fn, "grad", ga, "labels", l);
      g = ga.f();
    }
    float* op = out_arg(fn, out_, o, {{"pred", &p}, {"labels", &l}, {"grad", g ? &ga : nullptr}});
    void* s = stream_arg(stream);
    double v;
    {
      py::gil_scoped_release nogil;
      v = cuda::sparse_categorical_crossentropy(rows, cols, p.f(), l.i64(), g, op, s);
    }
    return result(op, v);
  }, arg("pred"), arg("labels"), arg("grad") = py::none(), arg("out") = py::none(), arg("stream") = py::none());

  m.def("softmax_crossentropy", [](py::object x_, py::object l_, py::object t_, py::object pr_, py::object g_,
                                   py::object out_, py::object stream) {
    const char* fn = "softmax_crossentropy";
    Arr x = din_f32(fn, "logits", x_);
    auto [rows, cols] = rows_cols(fn, x);
    if (l_.is_none() == t_.is_none()) fail_value(std::string(fn) + ": pass exactly one of 'labels' and 'target'");
    Arr l, t, pr, g, o;
    const std::int64_t* lp = nullptr; const float* tp = nullptr; float* prp = nullptr; float* gp = nullptr;
    if (!l_.is_none()) {
      l = din_i64(fn, "labels", l_);
      if (l.size != rows) fail_value(std::string(fn) + ": 'labels' must have " + std::to_string(rows) + " entries, got " + std::to_string(l.size));
      lp = l.i64();
    } else {
      t = din_f32(fn, "target", t_); expect_shape(fn, "target", t, x.shape); tp = t.f();
    }
    // Outputs overlap no input: the labels/target are read while probs and grad are written.
    if (!pr_.is_none()) {
      pr = dout_f32(fn, "probs", pr_); expect_shape(fn, "probs", pr, x.shape);
      no_alias(fn, "probs", pr, "logits", x);
      if (lp) no_alias(fn, "probs", pr, "labels", l); else no_alias(fn, "probs", pr, "target", t);
      prp = pr.f();
    }
    if (!g_.is_none()) {
      g = dout_f32(fn, "grad", g_); expect_shape(fn, "grad", g, x.shape); no_alias(fn, "grad", g, "logits", x);
      if (lp) no_alias(fn, "grad", g, "labels", l); else no_alias(fn, "grad", g, "target", t);
      if (prp) no_alias(fn, "grad", g, "probs", pr);
      gp = g.f();
    }
    float* op = out_arg(fn, out_, o, {{"logits", &x}, {"labels", lp ? &l : nullptr}, {"target", tp ? &t : nullptr},
                                      {"probs", prp ? &pr : nullptr}, {"grad", gp ? &g : nullptr}});
    void* s = stream_arg(stream);
    double v;
    {
      py::gil_scoped_release nogil;
      v = cuda::softmax_crossentropy(rows, cols, x.f(), lp, tp, prp, gp, op, s);
    }
    return result(op, v);
  }, arg("logits"), arg("labels") = py::none(), arg("target") = py::none(), arg("probs") = py::none(),
     arg("grad") = py::none(), arg("out") = py::none(), arg("stream") = py::none(),
     "fused softmax + cross-entropy on logits; grad = (softmax - onehot)/rows");
}

static kilnet::bind::RegisterCudaFamily reg_loss(&cuda_bind_loss);
