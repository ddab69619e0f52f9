// loss.h — losses with their gradients, Keras semantics.
//   rows = batch (times any extra leading axes), cols = the last axis.
//   Each returns the loss averaged over rows (and, for mse/mae/bce, over cols: Keras takes the
//   mean over the last axis per sample, then the mean over samples) and, when grad is not
//   nullptr, writes d(loss)/d(input) — already divided by rows, ready for backward.
//   Probabilities are clipped to [eps, 1-eps] with eps = 1e-7 as Keras does; the logits forms
//   are exact and stable for logits of any magnitude.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu {

constexpr float kProbEps = 1e-7f;

double mse(index_t rows, index_t cols, const float* pred, const float* target, float* grad);
double mae(index_t rows, index_t cols, const float* pred, const float* target, float* grad);
// target in {0,1} (or any value in [0,1]); pred is a probability, or a logit when from_logits.
double binary_crossentropy(index_t rows, index_t cols, const float* pred, const float* target,
                           bool from_logits, float* grad);
// One-hot (or soft) targets; pred probabilities (renormalized per row, as Keras does).
double categorical_crossentropy(index_t rows, index_t cols, const float* pred, const float* target,
                                float* grad);
// Integer labels in [0, cols); pred probabilities.
double sparse_categorical_crossentropy(index_t rows, index_t cols, const float* pred,
                                       const std::int64_t* labels, float* grad);
// Fused softmax + cross-entropy on logits: probs (may be nullptr) = softmax(logits),
// grad = (probs - onehot)/rows. labels (int64, sparse) or target (dense); exactly one non-null.
double softmax_crossentropy(index_t rows, index_t cols, const float* logits,
                            const std::int64_t* labels, const float* target, float* probs,
                            float* grad);

// Reference versions: plain loops in double precision.
double mse_ref(index_t rows, index_t cols, const float* pred, const float* target, float* grad);
double mae_ref(index_t rows, index_t cols, const float* pred, const float* target, float* grad);
double binary_crossentropy_ref(index_t rows, index_t cols, const float* pred, const float* target,
                               bool from_logits, float* grad);
double categorical_crossentropy_ref(index_t rows, index_t cols, const float* pred,
                                    const float* target, float* grad);
double sparse_categorical_crossentropy_ref(index_t rows, index_t cols, const float* pred,
                                           const std::int64_t* labels, float* grad);
double softmax_crossentropy_ref(index_t rows, index_t cols, const float* logits,
                                const std::int64_t* labels, const float* target, float* probs,
                                float* grad);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same losses on device pointers, run on `stream` (a CUDA stream handle), with one more argument:
// out (a device float, or nullptr). With out, the mean loss is written to *out on the device,
// nothing is synchronized and the function returns 0; without it the function waits for the
// stream and returns the loss, like the CPU. The sum is deterministic (fixed-order partials).
// Labels are checked on the device: an out-of-range label gives its row a NaN loss and gradient
// (never an out-of-bounds read); the value-returning form then throws std::invalid_argument.
double mse(index_t rows, index_t cols, const float* pred, const float* target, float* grad, float* out,
           void* stream);
double mae(index_t rows, index_t cols, const float* pred, const float* target, float* grad, float* out,
           void* stream);
double binary_crossentropy(index_t rows, index_t cols, const float* pred, const float* target,
                           bool from_logits, float* grad, float* out, void* stream);
double categorical_crossentropy(index_t rows, index_t cols, const float* pred, const float* target,
                                float* grad, float* out, void* stream);
double sparse_categorical_crossentropy(index_t rows, index_t cols, const float* pred,
                                       const std::int64_t* labels, float* grad, float* out, void* stream);
double softmax_crossentropy(index_t rows, index_t cols, const float* logits, const std::int64_t* labels,
                            const float* target, float* probs, float* grad, float* out, void* stream);

}  // namespace kilnet::cuda
