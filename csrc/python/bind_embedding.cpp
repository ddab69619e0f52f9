// bind_embedding.cpp — Python bindings of the embedding gather and scatter-add.
#include <pybind11/pybind11.h>
#include "args_embedding.h"
#include "kilnet/embedding.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_embedding(py::module_& m, bool ref) {
  using F32 = void (*)(index_t, index_t, index_t, const std::int32_t*, const float*, float*);
  using F64 = void (*)(index_t, index_t, index_t, const std::int64_t*, const float*, float*);
  const F32 fwd32 = ref ? F32(&cpu::embedding_forward_ref) : F32(&cpu::embedding_forward);
  const F64 fwd64 = ref ? F64(&cpu::embedding_forward_ref) : F64(&cpu::embedding_forward);
  const F32 bwd32 = ref ? F32(&cpu::embedding_backward_ref) : F32(&cpu::embedding_backward);
  const F64 bwd64 = ref ? F64(&cpu::embedding_backward_ref) : F64(&cpu::embedding_backward);
  const F32 set32 = ref ? F32(&cpu::embedding_backward_set_ref) : F32(&cpu::embedding_backward_set);
  const F64 set64 = ref ? F64(&cpu::embedding_backward_set_ref) : F64(&cpu::embedding_backward_set);

  m.def("embedding_forward", [=](py::object ids_, py::object w_, py::object out_) {
    auto a = embedding_forward_args(host_arrays, ids_, w_, out_);
    KernelCall nogil;
    if (a.ids.elem_bytes == 4) fwd32(a.N, a.V, a.D, a.ids.i32(), a.w.f(), a.rows.f());
    else fwd64(a.N, a.V, a.D, a.ids.i64(), a.w.f(), a.rows.f());
  }, arg("ids"), arg("W"), arg("out"),
     "out[..., :] = W[ids[...], :]; ids int32 or int64 of any shape, each in [0, W.shape[0]); "
     "out has shape ids.shape + (W.shape[1],)");

  m.def("embedding_backward", [=](py::object ids_, py::object dy_, py::object dw_, bool accumulate) {
    auto a = embedding_backward_args(host_arrays, ids_, dy_, dw_);
    KernelCall nogil;
    const bool i32 = a.ids.elem_bytes == 4;
    if (accumulate) {
      if (i32) bwd32(a.N, a.V, a.D, a.ids.i32(), a.rows.f(), a.w.f());
      else bwd64(a.N, a.V, a.D, a.ids.i64(), a.rows.f(), a.w.f());
    } else {
      if (i32) set32(a.N, a.V, a.D, a.ids.i32(), a.rows.f(), a.w.f());
      else set64(a.N, a.V, a.D, a.ids.i64(), a.rows.f(), a.w.f());
    }
  }, arg("ids"), arg("dy"), arg("dW"), arg("accumulate") = true,
     "dW[ids[...], :] += dy[..., :], deterministic: each row summed in token order by one thread "
     "(the same bits at any thread count). accumulate=False: dW is overwritten (zeros, then the "
     "same sums) in one pass on every thread");
}
