// cuda_checks.h — argument validation for kilnet._cuda: the same Arr and shape helpers as the
// CPU bindings (checks.h), filled from CuPy arrays (anything with __cuda_array_interface__).
// A numpy array, host or managed memory, memory on another GPU than the current one, a wrong
// dtype or a non-contiguous layout raise a Python exception naming the argument.
#pragma once
#include <cuda_runtime.h>
#include <string>
#include "checks.h"

namespace kilnet::bind {

// The current device, read once per call by the caller (cudaGetDevice is cheap but not free).
inline int current_device() {
  int d = 0;
  if (cudaGetDevice(&d) != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("kilnet._cuda: no usable CUDA device");
  }
  return d;
}

// kind: 'f' float32, 'l' int64, 'i' int32. ndim < 0: any rank.
inline Arr dev_array_arg(const char* fn, const char* name, py::handle h, char kind, int ndim,
                         bool writable) {
  if (py::isinstance<py::array>(h))
    fail_type(std::string(fn) + ": argument '" + name + "' is a numpy (host) array, but this is the "
              "CUDA kernel: pass CuPy arrays (cupy.asarray), or numpy arrays to kilnet._cpu; one "
              "call cannot mix numpy and CuPy arrays");
  if (!py::hasattr(h, "__cuda_array_interface__"))
    fail_type(std::string(fn) + ": argument '" + name + "' must be a CuPy array, got " +
              std::string(py::str(py::type::of(h).attr("__name__"))));
  py::dict cai = h.attr("__cuda_array_interface__");
  const std::string typestr = py::str(cai["typestr"]);
  const char* want = kind == 'f' ? "<f4" : kind == 'i' ? "<i4" : "<i8";
  if (typestr != want)
    fail_type(std::string(fn) + ": argument '" + name + "' must have dtype " + kind_name(kind) +
              ", got typestr " + typestr);
  Arr a;
  a.obj = py::reinterpret_borrow<py::object>(h);
  for (py::handle d : py::tuple(cai["shape"])) a.shape.push_back(d.cast<index_t>());
  for (index_t d : a.shape) a.size *= d;
  if (ndim >= 0 && a.ndim() != ndim)
    fail_value(std::string(fn) + ": argument '" + name + "' must be " + std::to_string(ndim) +
               "-D, got " + std::to_string(a.ndim()) + "-D");
  // strides None means C-contiguous; explicit strides must equal the C-contiguous ones.
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    py::tuple st(cai["strides"]);
    index_t expect = kind == 'l' ? 8 : 4;
    for (int i = a.ndim() - 1; i >= 0; --i) {
      if (a.shape[size_t(i)] != 1 && st[size_t(i)].cast<index_t>() != expect)
        fail_value(std::string(fn) + ": argument '" + name +
                   "' must be C-contiguous (use cupy.ascontiguousarray)");
      expect *= a.shape[size_t(i)];
    }
  }
  py::tuple data(cai["data"]);
  a.data = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
  if (writable && data[1].cast<bool>())
    fail_value(std::string(fn) + ": output '" + name + "' is read-only");
  a.elem_bytes = kind == 'l' ? 8 : 4;
  a.bytes = a.size * a.elem_bytes;
  if (a.size == 0) return a;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, a.data) != cudaSuccess) {
    cudaGetLastError();
    fail_value(std::string(fn) + ": argument '" + name + "' does not point to CUDA memory");
  }
  if (attr.type != cudaMemoryTypeDevice)
    fail_value(std::string(fn) + ": argument '" + name + "' must be device memory (CuPy's "
               "default allocator); host, pinned and managed memory are refused");
  const int dev = current_device();
  if (attr.device != dev)
    fail_value(std::string(fn) + ": argument '" + name + "' lives on GPU " + std::to_string(attr.device) +
               " but the current device is GPU " + std::to_string(dev) +
               "; all arrays of one call must be on the current device (cupy.cuda.Device(n).use())");
  return a;
}

inline Arr din_f32(const char* fn, const char* name, py::handle h, int ndim = -1) {
  return dev_array_arg(fn, name, h, 'f', ndim, false);
}
inline Arr dout_f32(const char* fn, const char* name, py::handle h, int ndim = -1) {
  return dev_array_arg(fn, name, h, 'f', ndim, true);
}
inline Arr din_i64(const char* fn, const char* name, py::handle h, int ndim = -1) {
  return dev_array_arg(fn, name, h, 'l', ndim, false);
}

// Integer ids of either width (embedding): int32 or int64, told apart by Arr::elem_bytes.
inline Arr din_ids(const char* fn, const char* name, py::handle h, int ndim = -1) {
  if (!py::isinstance<py::array>(h) && py::hasattr(h, "__cuda_array_interface__") &&
      std::string(py::str(h.attr("__cuda_array_interface__")["typestr"])) == "<i4")
    return dev_array_arg(fn, name, h, 'i', ndim, false);
  if (!py::isinstance<py::array>(h) && py::hasattr(h, "__cuda_array_interface__") &&
      std::string(py::str(h.attr("__cuda_array_interface__")["typestr"])) != "<i8")
    fail_type(std::string(fn) + ": argument '" + name + "' must have dtype int32 or int64, got typestr " +
              std::string(py::str(h.attr("__cuda_array_interface__")["typestr"])));
  return dev_array_arg(fn, name, h, 'l', ndim, false);
}

inline const Arrays device_arrays{&din_f32, &dout_f32, &din_i64, false, &din_ids};

// The stream a call runs on: None means CuPy's current stream (cupy.cuda.get_current_stream()),
// an int is a raw cudaStream_t, anything with .ptr (a cupy.cuda.Stream) gives its handle.
inline void* stream_arg(py::handle s) {
  if (s.is_none()) {
    // Looked up once per process and never freed (a static py::object would be destroyed
    // after the interpreter is gone).
    static py::object* get_current =
        new py::object(py::module_::import("cupy.cuda").attr("get_current_stream"));
    return reinterpret_cast<void*>((*get_current)().attr("ptr").cast<std::uintptr_t>());
  }
  if (py::hasattr(s, "ptr")) return reinterpret_cast<void*>(s.attr("ptr").cast<std::uintptr_t>());
  return reinterpret_cast<void*>(s.cast<std::uintptr_t>());
}

// Each cuda_bind_<family>.cpp registers its binding function with a static
// RegisterCudaFamily object; cuda_module.cpp calls them all. Adding a family is adding a file.
using CudaBinder = void (*)(py::module_&);
inline std::vector<CudaBinder>& cuda_binders() {
  static std::vector<CudaBinder> v;
  return v;
}
struct RegisterCudaFamily {
  explicit RegisterCudaFamily(CudaBinder f) { cuda_binders().push_back(f); }
};

}  // namespace kilnet::bind
