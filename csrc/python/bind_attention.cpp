// bind_attention.cpp — Python bindings of the fused attention kernels (layout (B, T, N, H)).
#include <string>
#include <pybind11/pybind11.h>
#include "args_attention.h"
#include "kilnet/attention.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_attention(py::module_& m, bool ref) {
  const auto fwd = ref ? &cpu::attention_forward_ref : &cpu::attention_forward;
  const auto bwd = ref ? &cpu::attention_backward_ref : &cpu::attention_backward;

  // name, bf16: the float32 kernels and, under a bfloat16 policy, the bfloat16-product ones
  // (AttnShape::bf16; the reference module binds the float32 reference under both names).
  for (const bool bf16 : {false, true}) {
    const std::string sfx = bf16 ? "_bf16" : "";
    const std::string how = bf16 ? " Products on bfloat16-rounded operands with float32 sums (AMX tiles where "
                                   "bf16_level() is 'amx', VDPBF16PS where it is 'avx512bf16', else the "
                                   "float32 kernel); scores, softmax and "
                                   "outputs float32." : "";
    m.def(("attention_forward" + sfx).c_str(), [=](py::object q_, py::object k_, py::object v_, py::object bias_,
                                                 py::object mask_, py::object out_, py::object lse_, float scale,
                                                 bool is_causal) {
      auto a = attention_forward_args(host_arrays, &host_bool, q_, k_, v_, bias_, mask_, out_, lse_, scale, is_causal);
      a.s.bf16 = bf16;
      KernelCall nogil;
      fwd(a.s, a.q.f(), a.k.f(), a.v.f(), a.m, a.out.f(), a.lse.f());
    }, arg("query"), arg("key"), arg("value"), arg("bias"), arg("mask"), arg("out"), arg("lse"), arg("scale"),
       arg("is_causal") = false,
       ("out = softmax(scale * q k^T + bias, masked) v over (B, T, N, H) arrays; writes the per-row "
        "logsumexp lse (B, N, Tq) for the backward. bias (float32) / mask (bool, True = attend) may be "
        "None or broadcastable to (B, N, Tq, Tk). Never forms the Tq x Tk matrix." + how).c_str());

    m.def(("attention_backward" + sfx).c_str(), [=](py::object q_, py::object k_, py::object v_, py::object bias_,
                                                  py::object mask_, py::object out_, py::object lse_,
                                                  py::object dout_, py::object dq_, py::object dk_, py::object dv_,
                                                  float scale, bool is_causal) {
      auto a = attention_backward_args(host_arrays, &host_bool, q_, k_, v_, bias_, mask_, out_, lse_, dout_, dq_,
                                       dk_, dv_, scale, is_causal);
      a.s.bf16 = bf16;
      KernelCall nogil;
      bwd(a.s, a.q.f(), a.k.f(), a.v.f(), a.m, a.out.f(), a.lse.f(), a.dout.f(), a.dq.f(), a.dk.f(), a.dv.f());
    }, arg("query"), arg("key"), arg("value"), arg("bias"), arg("mask"), arg("out"), arg("lse"), arg("dout"),
       arg("dq"), arg("dk"), arg("dv"), arg("scale"), arg("is_causal") = false,
       ("dq, dk, dv (overwritten) from dout, recomputing the probabilities from the saved lse" + how).c_str());
  }
}
