// bind_peak.cpp — Python binding of the FMA peak probe (kilnet/peak.h), used by `kilnet bench`.
// It has no reference variant: cpu_module.cpp binds it on kilnet._cpu only, not on kilnet._cpu.ref.
#include <pybind11/pybind11.h>
#include <cmath>
#include <string>
#include "checks.h"
#include "kilnet/gemm_bf16.h"
#include "kilnet/peak.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;

void kilnet::bind::bind_peak(py::module_& m) {
  m.def("fma_peak_gflops", [](int threads, double seconds, const std::string& simd) {
    // A cap on threads: 200000 OpenMP threads exhaust the address space (a crash, not an error).
    if (threads < 1 || threads > 1024)
      fail_value("fma_peak_gflops: threads must be in [1, 1024], got " + std::to_string(threads));
    cpu::Simd level = cpu::simd();
    if (!simd.empty()) {
      if (simd == "scalar") level = cpu::Simd::Scalar;
      else if (simd == "avx2") level = cpu::Simd::Avx2;
      else if (simd == "avx512") level = cpu::Simd::Avx512;
      else fail_value("fma_peak_gflops: simd must be 'scalar', 'avx2' or 'avx512', got '" + simd + "'");
      if (static_cast<int>(level) > static_cast<int>(cpu::simd()))
        fail_value("fma_peak_gflops: simd='" + simd + "' is above the level in use, '" +
                   cpu::simd_level() + "'");
    }
    if (!(seconds > 0.0 && seconds <= 10.0))
      fail_value("fma_peak_gflops: seconds must be in (0, 10], got " + std::to_string(seconds));
    KernelCall nogil;
    return cpu::fma_peak_gflops(threads, seconds, level);
  }, py::arg("threads") = 1, py::arg("seconds") = 0.2, py::arg("simd") = "",
     "Measured FMA peak in GFLOP/s (summed over `threads` OpenMP threads, 2 flops per FMA lane), "
     "from independent FMA chains run for about `seconds` at SIMD level `simd` ('scalar', "
     "'avx2', 'avx512'; default: the level in use, simd_level(); never above it)");
  m.def("cpu_has_avx512bf16", &cpu::cpu_has_avx512bf16,
        "The CPU has AVX512-BF16 and the SIMD level in use is avx512 (whatever KILNET_BF16 says)");
  m.def("bf16_dot_peak_gflops", [](int threads, double seconds) {
    if (threads < 1 || threads > 1024)
      fail_value("bf16_dot_peak_gflops: threads must be in [1, 1024], got " + std::to_string(threads));
    if (!(seconds > 0.0 && seconds <= 10.0))
      fail_value("bf16_dot_peak_gflops: seconds must be in (0, 10], got " + std::to_string(seconds));
    if (!cpu::cpu_has_avx512bf16())
      throw std::runtime_error("bf16_dot_peak_gflops: this CPU (or KILNET_SIMD) gives no AVX512-BF16");
    KernelCall nogil;
    return cpu::bf16_dot_peak_gflops(threads, seconds);
  }, py::arg("threads") = 1, py::arg("seconds") = 0.2,
     "Measured bfloat16 dot-product peak in GFLOP/s (summed over `threads` OpenMP threads): "
     "independent VDPBF16PS chains (2 multiply-adds per float32 lane) for about `seconds`; what "
     "gemm_bf16's % of peak divides by where bf16_level() is 'avx512bf16'. RuntimeError where the "
     "CPU has no AVX512-BF16 or KILNET_SIMD lowered the level below avx512.");
}
