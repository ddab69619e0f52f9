// bind_peak.cpp — Python binding of the FMA peak probe (kilnet/peak.h), used by `kilnet bench`.
// It has no reference variant: cpu_module.cpp binds it on kilnet._cpu only, not on kilnet._cpu.ref.
#include <pybind11/pybind11.h>
#include <cmath>
#include <string>
#include "checks.h"
#include "kilnet/peak.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;

void kilnet::bind::bind_peak(py::module_& m) {
  m.def("fma_peak_gflops", [](int threads, double seconds) {
    if (threads < 1)
      fail_value("fma_peak_gflops: threads must be >= 1, got " + std::to_string(threads));
    if (!(seconds > 0.0 && seconds <= 10.0))
      fail_value("fma_peak_gflops: seconds must be in (0, 10], got " + std::to_string(seconds));
    py::gil_scoped_release nogil;
    return cpu::fma_peak_gflops(threads, seconds);
  }, py::arg("threads") = 1, py::arg("seconds") = 0.2,
     "Measured FMA peak in GFLOP/s (summed over `threads` OpenMP threads, 2 flops per FMA lane), "
     "from independent FMA chains run for about `seconds`");
}
