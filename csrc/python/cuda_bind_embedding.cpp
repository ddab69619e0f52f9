// cuda_bind_embedding.cpp — kilnet._cuda bindings of the embedding gather and scatter-add: the
// same names, arguments and checks as bind_embedding.cpp, on CuPy arrays, plus `stream`. The
// ids' range is checked by the kernel (their values are on the GPU): a bad id raises ValueError
// naming it, after the call (it waits for the stream).
#include <pybind11/pybind11.h>
#include "args_embedding.h"
#include "cuda_checks.h"
#include "kilnet/embedding.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_embedding(py::module_& m) {
  m.def("embedding_forward", [](py::object ids_, py::object w_, py::object out_, py::object stream) {
    auto a = embedding_forward_args(device_arrays, ids_, w_, out_);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::embedding_forward(a.N, a.V, a.D, a.ids.data, a.ids.elem_bytes, a.w.f(), a.rows.f(), st);
  }, arg("ids"), arg("W"), arg("out"), arg("stream") = py::none(),
     "out[..., :] = W[ids[...], :]; ids int32 or int64 of any shape, each in [0, W.shape[0]) (checked "
     "on the device: ValueError naming the first bad id)");

  m.def("embedding_backward", [](py::object ids_, py::object dy_, py::object dw_, bool accumulate,
                                  py::object stream) {
    auto a = embedding_backward_args(device_arrays, ids_, dy_, dw_);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    if (accumulate) cuda::embedding_backward(a.N, a.V, a.D, a.ids.data, a.ids.elem_bytes, a.rows.f(), a.w.f(), st);
    else cuda::embedding_backward_set(a.N, a.V, a.D, a.ids.data, a.ids.elem_bytes, a.rows.f(), a.w.f(), st);
  }, arg("ids"), arg("dy"), arg("dW"), arg("accumulate") = true, arg("stream") = py::none(),
     "dW[ids[...], :] += dy[..., :], deterministic (stable sort by id, rows added in token order). "
     "accumulate=False: dW is zeroed on the stream first");
}

static kilnet::bind::RegisterCudaFamily reg_embedding(&cuda_bind_embedding);
