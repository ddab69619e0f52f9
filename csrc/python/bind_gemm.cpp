// bind_gemm.cpp — Python bindings of the GEMM family: checks, then the kernel without the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "checks.h"
#include "kilnet/gemm.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_gemm(py::module_& m, bool ref) {
  const auto gemm = ref ? &cpu::gemm_ref : &cpu::gemm;
  const auto bias_backward = ref ? &cpu::bias_backward_ref : &cpu::bias_backward;
  m.def("gemm", [=](py::object a_, py::object b_, py::object c_, bool trans_a, bool trans_b,
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
    gemm(trans_a, trans_b, M, N, Ka, alpha, a.f(), a.dim(1), b.f(), b.dim(1), beta, c.f(), N, bias);
  }, arg("a"), arg("b"), arg("c"), arg("trans_a") = false, arg("trans_b") = false,
     arg("alpha") = 1.0f, arg("beta") = 0.0f, arg("bias") = py::none(),
     "c = alpha * op(a) @ op(b) + beta * c (+ bias). All float32, C-contiguous, c written in place.");

  m.def("bias_backward", [=](py::object dy_, py::object db_) {
    const char* fn = "bias_backward";
    Arr dy = in_f32(fn, "dy", dy_), db = out_f32(fn, "db", db_, 1);
    auto [rows, cols] = rows_cols(fn, dy);
    expect_shape(fn, "db", db, {cols});
    no_alias(fn, "db", db, "dy", dy);
    py::gil_scoped_release nogil;
    bias_backward(rows, cols, dy.f(), db.f());
  }, arg("dy"), arg("db"), "db += dy summed over all leading axes");
}
