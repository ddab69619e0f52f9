// cuda_bind_attention.cpp — kilnet._cuda bindings of the fused attention kernels: the same
// names, arguments and checks as bind_attention.cpp, on CuPy arrays, plus `stream`. Head dims
// up to 256 (the CUDA kernels keep a row in registers).
#include <pybind11/pybind11.h>
#include <string>
#include "args_attention.h"
#include "cuda_checks.h"
#include "kilnet/attention.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

// A CuPy bool array (typestr |b1), C-contiguous, in device memory of the current GPU.
Arr device_bool(const char* fn, const char* name, py::handle h) {
  if (py::isinstance<py::array>(h))
    fail_type(std::string(fn) + ": argument '" + name + "' is a numpy (host) array, but this is the CUDA "
              "kernel: pass CuPy arrays");
  if (!py::hasattr(h, "__cuda_array_interface__"))
    fail_type(std::string(fn) + ": argument '" + name + "' must be a CuPy array, got " +
              std::string(py::str(py::type::of(h).attr("__name__"))));
  py::dict cai = h.attr("__cuda_array_interface__");
  const std::string typestr = py::str(cai["typestr"]);
  if (typestr != "|b1")
    fail_type(std::string(fn) + ": argument '" + name + "' must have dtype bool, got typestr " + typestr);
  Arr a;
  a.obj = py::reinterpret_borrow<py::object>(h);
  for (py::handle d : py::tuple(cai["shape"])) a.shape.push_back(d.cast<index_t>());
  for (index_t d : a.shape) a.size *= d;
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    py::tuple st(cai["strides"]);
    index_t expect = 1;
    for (int i = a.ndim() - 1; i >= 0; --i) {
      if (a.shape[size_t(i)] != 1 && st[size_t(i)].cast<index_t>() != expect)
        fail_value(std::string(fn) + ": argument '" + name + "' must be C-contiguous (use cupy.ascontiguousarray)");
      expect *= a.shape[size_t(i)];
    }
  }
  a.data = reinterpret_cast<void*>(py::tuple(cai["data"])[0].cast<std::uintptr_t>());
  a.bytes = a.size;
  if (a.size == 0) return a;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, a.data) != cudaSuccess || attr.type != cudaMemoryTypeDevice) {
    cudaGetLastError();
    fail_value(std::string(fn) + ": argument '" + name + "' must be device memory (CuPy's default allocator)");
  }
  if (attr.device != current_device())
    fail_value(std::string(fn) + ": argument '" + name + "' lives on another GPU than the current device");
  return a;
}

void check_head_dim(const AttentionArgs& a, const char* fn) {
  if (a.s.H > 256)
    fail_value(std::string(fn) + ": the CUDA kernels take head dims up to 256, got " + std::to_string(a.s.H));
}

}  // namespace

static void cuda_bind_attention(py::module_& m) {
  m.def("attention_forward", [](py::object q_, py::object k_, py::object v_, py::object bias_, py::object mask_,
                                py::object out_, py::object lse_, float scale, bool is_causal, py::object stream) {
    auto a = attention_forward_args(device_arrays, &device_bool, q_, k_, v_, bias_, mask_, out_, lse_, scale, is_causal);
    check_head_dim(a, "attention_forward");
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::attention_forward(a.s, a.q.f(), a.k.f(), a.v.f(), a.m, a.out.f(), a.lse.f(), st);
  }, arg("query"), arg("key"), arg("value"), arg("bias"), arg("mask"), arg("out"), arg("lse"), arg("scale"),
     arg("is_causal") = false, arg("stream") = py::none(),
     "out = softmax(scale * q k^T + bias, masked) v over (B, T, N, H) arrays; writes lse (B, N, Tq)");

  m.def("attention_backward", [](py::object q_, py::object k_, py::object v_, py::object bias_, py::object mask_,
                                 py::object out_, py::object lse_, py::object dout_, py::object dq_, py::object dk_,
                                 py::object dv_, float scale, bool is_causal, py::object stream) {
    auto a = attention_backward_args(device_arrays, &device_bool, q_, k_, v_, bias_, mask_, out_, lse_, dout_, dq_,
                                     dk_, dv_, scale, is_causal);
    check_head_dim(a, "attention_backward");
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::attention_backward(a.s, a.q.f(), a.k.f(), a.v.f(), a.m, a.out.f(), a.lse.f(), a.dout.f(), a.dq.f(),
                             a.dk.f(), a.dv.f(), st);
  }, arg("query"), arg("key"), arg("value"), arg("bias"), arg("mask"), arg("out"), arg("lse"), arg("dout"),
     arg("dq"), arg("dk"), arg("dv"), arg("scale"), arg("is_causal") = false, arg("stream") = py::none(),
     "dq, dk, dv (overwritten) from dout, recomputing the probabilities from the saved lse");
}

static kilnet::bind::RegisterCudaFamily reg_attention(&cuda_bind_attention);
