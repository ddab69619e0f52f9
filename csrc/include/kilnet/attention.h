// attention.h — fused scaled-dot-product attention, forward and backward, Keras 3's
// keras.ops.dot_product_attention semantics, FlashAttention-style: tiled, online softmax, the
// per-row logsumexp saved for the backward, which recomputes the probabilities. The Tq x Tk
// score matrix is never stored; extra memory is linear in Tq and Tk.
//
// Layout (Keras's BTNH): q, out, dout, dq: (B, Tq, N, H);  k, v, dk, dv: (B, Tk, Nk, H), with
// N % Nk == 0 (Nk < N is grouped-query attention: query head n reads key/value head n / (N/Nk)).
// lse: (B, N, Tq).
//
// For query row i and key j of head n in batch b:
//   logit(i, j) = scale * q_i . k_j + bias(b, n, i, j)         (bias optional)
//   allowed(i, j) = mask(b, n, i, j) && (!causal || j <= i)    (mask optional; j <= i is Keras's
//                                                               tril(ones(Tq, Tk)): top-left aligned)
//   p(i, .) = softmax over the allowed keys;  out_i = sum_j p(i, j) v_j
//   lse_i = log sum_{allowed j} exp(logit(i, j))
// A row with no allowed key (or whose allowed logits are all -inf) gets, as in Keras (which
// writes -0.7*FLT_MAX into masked logits), the mean of v over all Tk keys; its lse is +inf and
// it sends gradient only to v (dv_j += dout_i / Tk).
//
// bias (float) and mask (bytes, nonzero = attend) are read through strides (in elements) over
// (b, n, i, j): a broadcast axis has stride 0, so a key-padding mask (B, 1, 1, Tk) or a full
// (1, 1, Tq, Tk) mask is streamed tile by tile, never expanded. For the mask/bias, n is the
// query head.
//
// Backward: dq, dk, dv are overwritten. No bias gradient (kilnet.ops computes it on a plain
// path when a bias needs one).
#pragma once
#include <cstdint>
#include "kilnet/common.h"

namespace kilnet {

struct AttnShape {
  index_t B = 0, Tq = 0, Tk = 0, N = 0, Nk = 0, H = 0;
  float scale = 1.f;
  bool causal = false;
  // Products on bfloat16-rounded operands with float32 sums (mixed precision), on AMX tiles where
  // bf16_level() is "amx", on VDPBF16PS where it is "avx512bf16"; elsewhere the float32 kernels
  // run (a more exact result).
  bool bf16 = false;
};

struct AttnMask {
  const float* bias = nullptr;          // nullptr: no bias
  index_t bias_stride[4] = {0, 0, 0, 0};
  const std::uint8_t* mask = nullptr;   // nullptr: every key allowed
  index_t mask_stride[4] = {0, 0, 0, 0};
};

}  // namespace kilnet

namespace kilnet::cpu {

void attention_forward(const AttnShape& s, const float* q, const float* k, const float* v,
                       const AttnMask& m, float* out, float* lse);
void attention_backward(const AttnShape& s, const float* q, const float* k, const float* v,
                        const AttnMask& m, const float* out, const float* lse, const float* dout,
                        float* dq, float* dk, float* dv);
// Plain loops, one query row at a time (memory O(Tk)): the reference for tests.
void attention_forward_ref(const AttnShape& s, const float* q, const float* k, const float* v,
                           const AttnMask& m, float* out, float* lse);
void attention_backward_ref(const AttnShape& s, const float* q, const float* k, const float* v,
                            const AttnMask& m, const float* out, const float* lse,
                            const float* dout, float* dq, float* dk, float* dv);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same on device pointers, run on `stream`; one thread block per (query tile, head, batch)
// in the forward and per (key tile, key head, batch) in the backward (dq by a second pass over
// query tiles), so no atomics and the result does not depend on timing.
void attention_forward(const AttnShape& s, const float* q, const float* k, const float* v,
                       const AttnMask& m, float* out, float* lse, void* stream);
void attention_backward(const AttnShape& s, const float* q, const float* k, const float* v,
                        const AttnMask& m, const float* out, const float* lse, const float* dout,
                        float* dq, float* dk, float* dv, void* stream);

}  // namespace kilnet::cuda
