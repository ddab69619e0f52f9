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
#include "args_loss.h"
#include "cuda_checks.h"
#include "kilnet/loss.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

// The optional out: float32 device array of shape (1,), apart from every other argument.
float* out_arg(const char* fn, py::handle out_, Arr& o, const LossArgs& a) {
  if (out_.is_none()) return nullptr;
  o = dout_f32(fn, "out", out_);
  expect_shape(fn, "out", o, {1});
  for (const Named& x : {Named{"pred", &a.p}, Named{"target", a.tp ? &a.t : nullptr},
                         Named{"labels", a.lp ? &a.l : nullptr}, Named{"probs", a.probsp ? &a.probs : nullptr},
                         Named{"grad", a.gp ? &a.grad : nullptr}})
    if (x.second) no_alias(fn, "out", o, x.first, *x.second);
  return o.f();
}

py::object result(float* out, double v) {
  if (out) return py::none();
  return py::float_(v);
}

}  // namespace

static void cuda_bind_loss(py::module_& m) {
  // Losses: pred and target of one shape; grad (optional) receives d(loss)/d(pred).
  auto pair_loss = [&m](const char* name, bool probs, auto call) {
    m.def(name, [name, probs, call](py::object p_, py::object t_, py::object g_, py::object out_, py::object stream) {
      auto a = pair_loss_args(device_arrays, name, p_, t_, g_, probs);
      Arr o;
      float* op = out_arg(name, out_, o, a);
      void* s = stream_arg(stream);
      double v;
      {
        py::gil_scoped_release nogil;
        v = call(a.rows, a.cols, a.p.f(), a.tp, a.gp, op, s);
      }
      return result(op, v);
    }, arg("pred"), arg("target"), arg("grad") = py::none(), arg("out") = py::none(),
       arg("stream") = py::none());
  };
  pair_loss("mse", false, [](index_t r, index_t c, const float* p, const float* t, float* g, float* o, void* s) {
    return cuda::mse(r, c, p, t, g, o, s); });
  pair_loss("mae", false, [](index_t r, index_t c, const float* p, const float* t, float* g, float* o, void* s) {
    return cuda::mae(r, c, p, t, g, o, s); });
  pair_loss("categorical_crossentropy", true, [](index_t r, index_t c, const float* p, const float* t, float* g,
                                                 float* o, void* s) {
    return cuda::categorical_crossentropy(r, c, p, t, g, o, s); });

  m.def("binary_crossentropy", [](py::object p_, py::object t_, bool from_logits, py::object g_,
                                  py::object out_, py::object stream) {
    const char* fn = "binary_crossentropy";
    auto a = pair_loss_args(device_arrays, fn, p_, t_, g_, false, true, from_logits);
    Arr o;
    float* op = out_arg(fn, out_, o, a);
    void* s = stream_arg(stream);
    double v;
    {
      py::gil_scoped_release nogil;
      v = cuda::binary_crossentropy(a.rows, a.cols, a.p.f(), a.tp, from_logits, a.gp, op, s);
    }
    return result(op, v);
  }, arg("pred"), arg("target"), arg("from_logits") = false, arg("grad") = py::none(),
     arg("out") = py::none(), arg("stream") = py::none());

  m.def("sparse_categorical_crossentropy", [](py::object p_, py::object l_, py::object g_, py::object out_,
                                              py::object stream) {
    auto a = sparse_categorical_crossentropy_args(device_arrays, p_, l_, g_);
    Arr o;
    float* op = out_arg("sparse_categorical_crossentropy", out_, o, a);
    void* s = stream_arg(stream);
    double v;
    {
      py::gil_scoped_release nogil;
      v = cuda::sparse_categorical_crossentropy(a.rows, a.cols, a.p.f(), a.lp, a.gp, op, s);
    }
    return result(op, v);
  }, arg("pred"), arg("labels"), arg("grad") = py::none(), arg("out") = py::none(), arg("stream") = py::none());

  m.def("softmax_crossentropy", [](py::object x_, py::object l_, py::object t_, py::object pr_, py::object g_,
                                   py::object out_, py::object stream) {
    auto a = softmax_crossentropy_args(device_arrays, x_, l_, t_, pr_, g_);
    Arr o;
    float* op = out_arg("softmax_crossentropy", out_, o, a);
    void* s = stream_arg(stream);
    double v;
    {
      py::gil_scoped_release nogil;
      v = cuda::softmax_crossentropy(a.rows, a.cols, a.p.f(), a.lp, a.tp, a.probsp, a.gp, op, s);
    }
    return result(op, v);
  }, arg("logits"), arg("labels") = py::none(), arg("target") = py::none(), arg("probs") = py::none(),
     arg("grad") = py::none(), arg("out") = py::none(), arg("stream") = py::none(),
     "fused softmax + cross-entropy on logits; grad = (softmax - onehot)/rows");
}

static kilnet::bind::RegisterCudaFamily reg_loss(&cuda_bind_loss);
