// cuda_module.cpp — kilnet._cuda: bindings for the CUDA backend. Importing it never needs a
// GPU; calls that do raise RuntimeError when none is usable. Kernels arrive with the CUDA issue
// and take CuPy arrays (checked here like _cpu checks numpy arrays).
#include <pybind11/pybind11.h>
#include "kilnet/device.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "kilnet CUDA kernels";
  m.def("device_count", &kilnet::cuda::device_count, "number of usable GPUs (0 without a driver)");
  m.def("device_name", &kilnet::cuda::device_name, py::arg("device") = 0);
  m.def("runtime_version", &kilnet::cuda::runtime_version);
  m.def("compiled_architectures", &kilnet::cuda::compiled_architectures);
}
