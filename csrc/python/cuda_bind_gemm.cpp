// cuda_bind_gemm.cpp — kilnet._cuda bindings of the GEMM family: the same names, arguments and
// checks as bind_gemm.cpp, on CuPy arrays, plus `stream` (None = CuPy's current stream).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_gemm.h"
#include "cuda_checks.h"
#include "kilnet/gemm.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_gemm(py::module_& m) {
  m.def("gemm", [](py::object a_, py::object b_, py::object c_, bool trans_a, bool trans_b,
                   float alpha, float beta, py::object bias_, py::object colsum_, py::object stream) {
    auto g = gemm_args(device_arrays, a_, b_, c_, trans_a, trans_b, bias_, colsum_);
    if (g.cp && trans_b) fail_value("gemm: 'colsum' is taken with trans_b=False only on the GPU");
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::gemm(trans_a, trans_b, g.M, g.N, g.K, alpha, g.a.f(), g.a.dim(1), g.b.f(), g.b.dim(1), beta, g.c.f(), g.N,
               g.bp, st);
    if (g.cp) cuda::bias_backward(g.K, g.N, g.b.f(), g.cp, st);   // b is K x N, contiguous
  }, arg("a"), arg("b"), arg("c"), arg("trans_a") = false, arg("trans_b") = false,
     arg("alpha") = 1.0f, arg("beta") = 0.0f, arg("bias") = py::none(), arg("colsum") = py::none(),
     arg("stream") = py::none(),
     "c = alpha * op(a) @ op(b) + beta * c (+ bias). All float32 CuPy arrays, C-contiguous, c "
     "written in place on `stream`. With set_tf32(True) the tensor cores are used (~1e-3 error). "
     "colsum: += op(b)'s column sums (a second kernel over b; trans_b=False).");

  m.def("bias_backward", [](py::object dy_, py::object db_, py::object stream) {
    auto g = bias_backward_args(device_arrays, dy_, db_);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::bias_backward(g.rows, g.cols, g.dy.f(), g.db.f(), st);
  }, arg("dy"), arg("db"), arg("stream") = py::none(),
     "db += dy summed over all leading axes (deterministic order)");
}

static kilnet::bind::RegisterCudaFamily reg_gemm(&cuda_bind_gemm);
