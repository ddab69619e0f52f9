// c_api_optim.cpp — the C API of the optimizer updates (kilnet/c_api.h, kilnet/optim.h).
#include "capi_internal.h"
#include "kilnet/optim.h"

using namespace kilnet;
using namespace kilnet::capi;

extern "C" {

int kilnet_sgd_update(int64_t n, float* param, const float* grad, float* velocity, float lr,
                      float momentum, int nesterov) {
  return guarded("kilnet_sgd_update", [&] {
    positive("n", n);
    need("param", param); need("grad", grad);
    if (momentum != 0.f && !velocity)
      fail(KILNET_ERR_NULL_POINTER, "'velocity' is NULL but momentum = ", momentum, " needs it");
    const Span p = span("param", param, n), g = span("grad", grad, n), v = span("velocity", velocity, n);
    no_overlap(p, g);
    no_overlap(v, p);
    no_overlap(v, g);
    cpu::sgd_update(n, param, grad, velocity, lr, momentum, nesterov != 0);
  });
}

int kilnet_adam_update(int64_t n, float* param, const float* grad, float* m, float* v, float lr,
                       float beta1, float beta2, float eps, int64_t step) {
  return guarded("kilnet_adam_update", [&] {
    positive("n", n);
    need("param", param); need("grad", grad); need("m", m); need("v", v);
    if (step < 1) fail(KILNET_ERR_INVALID_VALUE, "'step' counts from 1, got ", step);
    const Span ps = span("param", param, n), gs = span("grad", grad, n), ms = span("m", m, n),
               vs = span("v", v, n);
    no_overlap(ps, gs); no_overlap(ms, ps); no_overlap(vs, ps);
    no_overlap(ms, vs); no_overlap(ms, gs); no_overlap(vs, gs);
    cpu::adam_update(n, param, grad, m, v, lr, beta1, beta2, eps, step);
  });
}

}  // extern "C"
