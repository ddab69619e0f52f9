// cuda_module.cpp — kilnet._cuda: the CUDA kernels for Python, with the same function names and
// arguments as kilnet._cpu plus `stream` (None = CuPy's current stream). Arrays are CuPy arrays
// (checked in cuda_checks.h). Importing it never needs a GPU; calls that do raise RuntimeError
// when none is usable. Each family's bindings live in cuda_bind_<family>.cpp.
#include <pybind11/pybind11.h>
#include "cuda_checks.h"
#include "kilnet/device.h"

namespace py = pybind11;
using namespace kilnet;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "kilnet CUDA kernels (our own: no cuBLAS, no cuDNN)";
  m.def("device_count", &cuda::device_count, "number of usable GPUs (0 without a driver)");
  m.def("device_name", &cuda::device_name, py::arg("device") = 0);
  m.def("runtime_version", &cuda::runtime_version);
  m.def("compiled_architectures", &cuda::compiled_architectures);
  m.def("set_tf32", &cuda::set_tf32, py::arg("on"),
        "use TF32 tensor cores in gemm and conv2d (off by default: results stay float32)");
  m.def("tf32", &cuda::tf32);
  m.def("synchronize", [] { py::gil_scoped_release nogil; cuda::synchronize(); },
        "wait for all work on the current device");
  for (bind::CudaBinder f : bind::cuda_binders()) f(m);
}
