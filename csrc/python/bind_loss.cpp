// bind_loss.cpp — Python bindings of the losses: each returns the mean loss, optionally writes the gradient.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cmath>
#include <string>
#include "checks.h"
#include "kilnet/loss.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_loss(py::module_& m, bool ref) {
  const auto mse = ref ? &cpu::mse_ref : &cpu::mse;
  const auto mae = ref ? &cpu::mae_ref : &cpu::mae;
  const auto bce = ref ? &cpu::binary_crossentropy_ref : &cpu::binary_crossentropy;
  const auto cce = ref ? &cpu::categorical_crossentropy_ref : &cpu::categorical_crossentropy;
  const auto scce = ref ? &cpu::sparse_categorical_crossentropy_ref : &cpu::sparse_categorical_crossentropy;
  const auto smce = ref ? &cpu::softmax_crossentropy_ref : &cpu::softmax_crossentropy;
  // Losses: pred and target of one shape; grad (optional) receives d(loss)/d(pred).
  // probs: pred must hold probabilities (finite, >= 0), target finite and >= 0.
  auto pair_loss = [&m](const char* name, bool probs, auto call) {
    m.def(name, [name, probs, call](py::object p_, py::object t_, py::object g_) {
      Arr p = in_f32(name, "pred", p_), t = in_f32(name, "target", t_);
      expect_shape(name, "target", t, p.shape);
      if (probs) {
        in_range(name, "pred", p, 0.f, HUGE_VALF);
        in_range(name, "target", t, 0.f, HUGE_VALF);
      }
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
  pair_loss("mse", false, [=](index_t r, index_t c, const float* p, const float* t, float* g) { return mse(r, c, p, t, g); });
  pair_loss("mae", false, [=](index_t r, index_t c, const float* p, const float* t, float* g) { return mae(r, c, p, t, g); });
  pair_loss("categorical_crossentropy", true, [=](index_t r, index_t c, const float* p, const float* t, float* g) { return cce(r, c, p, t, g); });

  m.def("binary_crossentropy", [=](py::object p_, py::object t_, bool from_logits, py::object g_) {
    const char* fn = "binary_crossentropy";
    Arr p = in_f32(fn, "pred", p_), t = in_f32(fn, "target", t_);
    expect_shape(fn, "target", t, p.shape);
    in_range(fn, "target", t, 0.f, 1.f);
    if (!from_logits) in_range(fn, "pred", p, 0.f, 1.f);
    auto [rows, cols] = rows_cols(fn, p);
    float* g = nullptr;
    Arr ga;
    if (!g_.is_none()) {
      ga = out_f32(fn, "grad", g_); expect_shape(fn, "grad", ga, p.shape);
      no_alias(fn, "grad", ga, "pred", p); no_alias(fn, "grad", ga, "target", t);
      g = ga.f();
    }
    py::gil_scoped_release nogil;
    return bce(rows, cols, p.f(), t.f(), from_logits, g);
  }, arg("pred"), arg("target"), arg("from_logits") = false, arg("grad") = py::none());

  m.def("sparse_categorical_crossentropy", [=](py::object p_, py::object l_, py::object g_) {
    const char* fn = "sparse_categorical_crossentropy";
    Arr p = in_f32(fn, "pred", p_);
    in_range(fn, "pred", p, 0.f, HUGE_VALF);
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
    return scce(rows, cols, p.f(), l.i64(), g);
  }, arg("pred"), arg("labels"), arg("grad") = py::none());

  m.def("softmax_crossentropy", [=](py::object x_, py::object l_, py::object t_, py::object pr_, py::object g_) {
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
    return smce(rows, cols, x.f(), lp, tp, prp, gp);
  }, arg("logits"), arg("labels") = py::none(), arg("target") = py::none(), arg("probs") = py::none(),
     arg("grad") = py::none(), "fused softmax + cross-entropy on logits; grad = (softmax - onehot)/rows");
}
