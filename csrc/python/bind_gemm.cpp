// bind_gemm.cpp — Python bindings of the GEMM family: checks, then the kernel without the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_gemm.h"
#include "kilnet/gemm.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_gemm(py::module_& m, bool ref) {
  const auto bias_backward = ref ? &cpu::bias_backward_ref : &cpu::bias_backward;
  if (!ref)
    m.def("gemm_kernel", &cpu::gemm_kernel,
          "The SGEMM micro-kernel for wide products: 'avx512 12x32', 'avx2 6x16' (also where the CPU "
          "splits 512-bit FMAs, Zen 4, unless KILNET_GEMM=avx512) or 'portable'");
  m.def("gemm", [=](py::object a_, py::object b_, py::object c_, bool trans_a, bool trans_b,
                    float alpha, float beta, py::object bias_, py::object colsum_) {
    auto g = gemm_args(host_arrays, a_, b_, c_, trans_a, trans_b, bias_, colsum_);
    KernelCall nogil;
    const float* b = g.b.f();
    const index_t ldb = g.b.dim(1);
    if (ref) {
      cpu::gemm_ref(trans_a, trans_b, g.M, g.N, g.K, alpha, g.a.f(), g.a.dim(1), b, ldb, beta, g.c.f(), g.N, g.bp);
      for (index_t j = 0; g.cp && j < g.N; ++j) {   // in double, as the reference GEMM
        double s = 0.0;
        for (index_t k = 0; k < g.K; ++k) s += trans_b ? b[j * ldb + k] : b[k * ldb + j];
        g.cp[j] += float(s);
      }
      return;
    }
    cpu::gemm(trans_a, trans_b, g.M, g.N, g.K, alpha, g.a.f(), g.a.dim(1), b, ldb, beta, g.c.f(), g.N, g.bp, g.cp);
  }, arg("a"), arg("b"), arg("c"), arg("trans_a") = false, arg("trans_b") = false,
     arg("alpha") = 1.0f, arg("beta") = 0.0f, arg("bias") = py::none(), arg("colsum") = py::none(),
     "c = alpha * op(a) @ op(b) + beta * c (+ bias). All float32, C-contiguous, c written in place. "
     "colsum (float32, N): += op(b)'s column sums (the bias gradient of dW = x^T dz), summed while "
     "op(b) is packed: no second pass over dz.");

  m.def("bias_backward", [=](py::object dy_, py::object db_) {
    auto g = bias_backward_args(host_arrays, dy_, db_);
    KernelCall nogil;
    bias_backward(g.rows, g.cols, g.dy.f(), g.db.f());
  }, arg("dy"), arg("db"), "db += dy summed over all leading axes");
}
