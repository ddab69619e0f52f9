// bind_loss.cpp — Python bindings of the losses: each returns the mean loss, optionally writes the gradient.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cmath>
#include <string>
#include "args_loss.h"
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
  auto pair_loss = [&m](const char* name, bool probs, auto call) {
    m.def(name, [name, probs, call](py::object p_, py::object t_, py::object g_) {
      auto a = pair_loss_args(host_arrays, name, p_, t_, g_, probs);
      KernelCall nogil;
      return call(a.rows, a.cols, a.p.f(), a.tp, a.gp);
    }, arg("pred"), arg("target"), arg("grad") = py::none());
  };
  pair_loss("mse", false, [=](index_t r, index_t c, const float* p, const float* t, float* g) { return mse(r, c, p, t, g); });
  pair_loss("mae", false, [=](index_t r, index_t c, const float* p, const float* t, float* g) { return mae(r, c, p, t, g); });
  pair_loss("categorical_crossentropy", true, [=](index_t r, index_t c, const float* p, const float* t, float* g) { return cce(r, c, p, t, g); });

  m.def("binary_crossentropy", [=](py::object p_, py::object t_, bool from_logits, py::object g_) {
    auto a = pair_loss_args(host_arrays, "binary_crossentropy", p_, t_, g_, false, true, from_logits);
    KernelCall nogil;
    return bce(a.rows, a.cols, a.p.f(), a.tp, from_logits, a.gp);
  }, arg("pred"), arg("target"), arg("from_logits") = false, arg("grad") = py::none());

  m.def("sparse_categorical_crossentropy", [=](py::object p_, py::object l_, py::object g_) {
    auto a = sparse_categorical_crossentropy_args(host_arrays, p_, l_, g_);
    KernelCall nogil;
    return scce(a.rows, a.cols, a.p.f(), a.lp, a.gp);
  }, arg("pred"), arg("labels"), arg("grad") = py::none());

  m.def("softmax_crossentropy", [=](py::object x_, py::object l_, py::object t_, py::object pr_, py::object g_) {
    auto a = softmax_crossentropy_args(host_arrays, x_, l_, t_, pr_, g_);
    KernelCall nogil;
    return smce(a.rows, a.cols, a.p.f(), a.lp, a.tp, a.probsp, a.gp);
  }, arg("logits"), arg("labels") = py::none(), arg("target") = py::none(), arg("probs") = py::none(),
     arg("grad") = py::none(), "fused softmax + cross-entropy on logits; grad = (softmax - onehot)/rows");
}
