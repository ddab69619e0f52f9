// c_api_loss.cpp — the C API of the losses (kilnet/c_api.h, kilnet/loss.h).
#include "capi_internal.h"
#include "kilnet/loss.h"

using namespace kilnet;
using namespace kilnet::capi;

namespace {

// rows, cols >= 1 and the element count rows * cols.
int64_t rows_cols(int64_t rows, int64_t cols) {
  positive("rows", rows); positive("cols", cols);
  return product({rows, cols});
}

void check_labels(int64_t rows, int64_t cols, const int64_t* labels) {
  for (int64_t i = 0; i < rows; ++i)
    if (labels[i] < 0 || labels[i] >= cols)
      fail(KILNET_ERR_INVALID_VALUE, "labels[", i, "] = ", labels[i], " is out of range [0, ", cols, ")");
}

// pred/target losses: the common checks, then the kernel; *loss written when not NULL.
template <class Kernel>
void pair_loss(int64_t rows, int64_t cols, const float* pred, const float* target, float* grad,
               double* loss, Kernel kernel) {
  const int64_t n = rows_cols(rows, cols);
  need("pred", pred); need("target", target);
  if (grad) {
    const Span g = span("grad", grad, n);
    no_overlap(g, span("pred", pred, n));
    no_overlap(g, span("target", target, n));
  }
  const double value = kernel(rows, cols, pred, target, grad);
  if (loss) *loss = value;
}

}  // namespace

extern "C" {

int kilnet_mse(int64_t rows, int64_t cols, const float* pred, const float* target, float* grad,
               double* loss) {
  return guarded("kilnet_mse", [&] { pair_loss(rows, cols, pred, target, grad, loss, &cpu::mse); });
}

int kilnet_mae(int64_t rows, int64_t cols, const float* pred, const float* target, float* grad,
               double* loss) {
  return guarded("kilnet_mae", [&] { pair_loss(rows, cols, pred, target, grad, loss, &cpu::mae); });
}

int kilnet_binary_crossentropy(int64_t rows, int64_t cols, const float* pred, const float* target,
                               int from_logits, float* grad, double* loss) {
  return guarded("kilnet_binary_crossentropy", [&] {
    pair_loss(rows, cols, pred, target, grad, loss,
              [&](int64_t r, int64_t c, const float* p, const float* t, float* g) {
                return cpu::binary_crossentropy(r, c, p, t, from_logits != 0, g);
              });
  });
}

int kilnet_categorical_crossentropy(int64_t rows, int64_t cols, const float* pred,
                                    const float* target, float* grad, double* loss) {
  return guarded("kilnet_categorical_crossentropy", [&] {
    pair_loss(rows, cols, pred, target, grad, loss, &cpu::categorical_crossentropy);
  });
}

int kilnet_sparse_categorical_crossentropy(int64_t rows, int64_t cols, const float* pred,
                                           const int64_t* labels, float* grad, double* loss) {
  return guarded("kilnet_sparse_categorical_crossentropy", [&] {
    const int64_t n = rows_cols(rows, cols);
    need("pred", pred); need("labels", labels);
    if (grad) {
      const Span g = span("grad", grad, n);
      no_overlap(g, span("pred", pred, n));
      no_overlap(g, span("labels", labels, rows));
    }
    check_labels(rows, cols, labels);
    const double value = cpu::sparse_categorical_crossentropy(rows, cols, pred, labels, grad);
    if (loss) *loss = value;
  });
}

int kilnet_softmax_crossentropy(int64_t rows, int64_t cols, const float* logits,
                                const int64_t* labels, const float* target, float* probs,
                                float* grad, double* loss) {
  return guarded("kilnet_softmax_crossentropy", [&] {
    const int64_t n = rows_cols(rows, cols);
    need("logits", logits);
    if ((labels == nullptr) == (target == nullptr))
      fail(labels ? KILNET_ERR_INVALID_VALUE : KILNET_ERR_NULL_POINTER,
           "pass exactly one of 'labels' and 'target' (the other NULL)");
    const Span in = labels ? span("labels", labels, rows) : span("target", target, n);
    const Span ls = span("logits", logits, n), ps = span("probs", probs, n), gs = span("grad", grad, n);
    for (const Span& out : {ps, gs}) {
      no_overlap(out, ls);
      no_overlap(out, in);
    }
    no_overlap(gs, ps);
    if (labels) check_labels(rows, cols, labels);
    const double value = cpu::softmax_crossentropy(rows, cols, logits, labels, target, probs, grad);
    if (loss) *loss = value;
  });
}

}  // extern "C"
