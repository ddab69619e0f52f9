// c_api_activation.cpp — the C API of the activations and softmax (kilnet/c_api.h,
// kilnet/activation.h).
#include "capi_internal.h"
#include "kilnet/activation.h"

using namespace kilnet;
using namespace kilnet::capi;

static_assert(int(Act::Linear) == KILNET_ACT_LINEAR && int(Act::Relu) == KILNET_ACT_RELU &&
                  int(Act::Sigmoid) == KILNET_ACT_SIGMOID && int(Act::Tanh) == KILNET_ACT_TANH &&
                  int(Act::Softmax) == KILNET_ACT_SOFTMAX,
              "enum kilnet_activation must match kilnet::Act");

extern "C" {

int kilnet_activation_forward(int act, int64_t n, const float* x, float* y) {
  return guarded("kilnet_activation_forward", [&] {
    const Act a = elementwise_act(act);
    positive("n", n);
    need("x", x); need("y", y);
    same_or_no_overlap(span("y", y, n), span("x", x, n));
    cpu::activation_forward(a, n, x, y);
  });
}

int kilnet_activation_backward(int act, int64_t n, const float* y, const float* dy, float* dx) {
  return guarded("kilnet_activation_backward", [&] {
    const Act a = elementwise_act(act);
    positive("n", n);
    need("y", y); need("dy", dy); need("dx", dx);
    const Span dxs = span("dx", dx, n);
    no_overlap(dxs, span("y", y, n));
    same_or_no_overlap(dxs, span("dy", dy, n));
    cpu::activation_backward(a, n, y, dy, dx);
  });
}

int kilnet_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) {
  return guarded("kilnet_softmax_forward", [&] {
    positive("rows", rows); positive("cols", cols);
    need("x", x); need("y", y);
    const int64_t n = product({rows, cols});
    same_or_no_overlap(span("y", y, n), span("x", x, n));
    cpu::softmax_forward(rows, cols, x, y);
  });
}

int kilnet_softmax_backward(int64_t rows, int64_t cols, const float* y, const float* dy, float* dx) {
  return guarded("kilnet_softmax_backward", [&] {
    positive("rows", rows); positive("cols", cols);
    need("y", y); need("dy", dy); need("dx", dx);
    const int64_t n = product({rows, cols});
    const Span dxs = span("dx", dx, n);
    no_overlap(dxs, span("y", y, n));
    same_or_no_overlap(dxs, span("dy", dy, n));
    cpu::softmax_backward(rows, cols, y, dy, dx);
  });
}

}  // extern "C"
