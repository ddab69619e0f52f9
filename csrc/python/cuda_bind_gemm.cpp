// cuda_bind_gemm.cpp — kilnet._cuda bindings of the GEMM family: the same names, arguments and
// checks as bind_gemm.cpp, on CuPy arrays, plus `stream` (None = CuPy's current stream).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "cuda_checks.h"
#include "kilnet/gemm.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_gemm(py::module_& m) {
  m.def("gemm", [](py::object a_, py::object b_, py::object c_, bool trans_a, bool trans_b,
                   float alpha, float beta, py::object bias_, py::object stream) {
    const char* fn = "gemm";
    Arr a = din_f32(fn, "a", a_, 2), b = din_f32(fn, "b", b_, 2), c = dout_f32(fn, "c", c_, 2);
    const index_t M = trans_a ? a.dim(1) : a.dim(0), Ka = trans_a ? a.dim(0) : a.dim(1);
    const index_t Kb = trans_b ? b.dim(1) : b.dim(0), N = trans_b ? b.dim(0) : b.dim(1);
    if (Ka != Kb)
      fail_value("gemm: inner dimensions differ: op(a) is " + shape_str({M, Ka}) + ", op(b) is " + shape_str({Kb, N}));
    expect_shape(fn, "c", c, {M, N});
    no_alias(fn, "c", c, "a", a); no_alias(fn, "c", c, "b", b);
    const float* bias = nullptr;
    Arr bb;
    if (!bias_.is_none()) {
      bb = din_f32(fn, "bias", bias_, 1);
      expect_shape(fn, "bias", bb, {N});
      no_alias(fn, "c", c, "bias", bb);
      bias = bb.f();
    }
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::gemm(trans_a, trans_b, M, N, Ka, alpha, a.f(), a.dim(1), b.f(), b.dim(1), beta, c.f(), N,
               bias, st);
  }, arg("a"), arg("b"), arg("c"), arg("trans_a") = false, arg("trans_b") = false,
     arg("alpha") = 1.0f, arg("beta") = 0.0f, arg("bias") = py::none(), arg("stream") = py::none(),
     "c = alpha * op(a) @ op(b) + beta * c (+ bias). All float32 CuPy arrays, C-contiguous, c "
     "written in place on `stream`. With set_tf32(True) the tensor cores are used (~1e-3 error).");

  m.def("bias_backward", [](py::object dy_, py::object db_, py::object stream) {
    const char* fn = "bias_backward";
    Arr dy = din_f32(fn, "dy", dy_), db = dout_f32(fn, "db", db_, 1);
    auto [rows, cols] = rows_cols(fn, dy);
    expect_shape(fn, "db", db, {cols});
    no_alias(fn, "db", db, "dy", dy);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::bias_backward(rows, cols, dy.f(), db.f(), st);
  }, arg("dy"), arg("db"), arg("stream") = py::none(),
     "db += dy summed over all leading axes (deterministic order)");
}

static kilnet::bind::RegisterCudaFamily reg_gemm(&cuda_bind_gemm);
