// loss.cpp — losses and their gradients (Keras semantics, see loss.h).
// The fast versions work in float per element with a double accumulator per row, parallel over
// rows; the _ref versions do everything in double, one element at a time.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include "softmax_internal.h"
#include "kilnet/loss.h"
#include "kilnet/detail/elementwise.h"
#include "parallel.h"
#include "store_ahead.h"

namespace kilnet::cpu {
namespace {

constexpr float kEps = kProbEps;
inline float clipf(float p) { return std::min(std::max(p, kEps), 1.f - kEps); }

// Sum f(i) over rows in parallel; f returns the row's loss as double.
template <class F>
double sum_rows(index_t rows, index_t cols, F f) {
  double total = 0.0;
#pragma omp parallel for reduction(+ : total) num_threads(threads_for(rows * cols, 16384)) schedule(static)
  for (index_t i = 0; i < rows; ++i) total += f(i);
  return total;
}

// Gradient of -sum_j t_j log(clip(q_j)), q = p / sum(p), with respect to p (one row).
// g_j = -t_j/q_j where q_j is not clipped (else 0); dL/dp_k = (g_k - <g, q>)/s.
template <class T>
double cce_row(index_t cols, const float* p, T target_of, float* grad, float scale) {
  double s = 0.0;
  for (index_t j = 0; j < cols; ++j) s += p[j];
  const float inv_s = s > 0 ? float(1.0 / s) : 0.f;
  double loss = 0.0, gq = 0.0;
  for (index_t j = 0; j < cols; ++j) {
    const float t = target_of(j);
    const float q = p[j] * inv_s;
    const float qc = clipf(q);
    if (t != 0.f) loss -= double(t) * std::log(qc);
    if (grad) {
      const float g = (q == qc && t != 0.f) ? -t / q : 0.f;
      grad[j] = g;
      gq += double(g) * q;
    }
  }
  if (grad)
    for (index_t j = 0; j < cols; ++j) grad[j] = float((grad[j] - gq) * inv_s) * scale;
  return loss;
}

}  // namespace

double mse(index_t rows, index_t cols, const float* p, const float* t, float* grad) {
  const float gs = 2.f / float(rows * cols);
  double total = sum_rows(rows, cols, [&](index_t i) {
    double acc = 0.0;
    for (index_t j = i * cols; j < (i + 1) * cols; ++j) {
      const double d = double(p[j]) - t[j];   // in double: the square of a float difference can overflow
      acc += d * d;
      if (grad) grad[j] = float(gs * d);
    }
    return acc;
  });
  return total / double(rows * cols);
}

double mae(index_t rows, index_t cols, const float* p, const float* t, float* grad) {
  const float gs = 1.f / float(rows * cols);
  double total = sum_rows(rows, cols, [&](index_t i) {
    double acc = 0.0;
    for (index_t j = i * cols; j < (i + 1) * cols; ++j) {
      const double d = double(p[j]) - t[j];
      acc += std::fabs(d);
      if (grad) grad[j] = d > 0 ? gs : (d < 0 ? -gs : 0.f);
    }
    return acc;
  });
  return total / double(rows * cols);
}

double binary_crossentropy(index_t rows, index_t cols, const float* p, const float* t,
                           bool from_logits, float* grad) {
  const float gs = 1.f / float(rows * cols);
  double total = sum_rows(rows, cols, [&](index_t i) {
    double acc = 0.0;
    for (index_t j = i * cols; j < (i + 1) * cols; ++j) {
      if (from_logits) {   // softplus(x) - t x, gradient sigmoid(x) - t
        acc += detail::bce_logits(p[j], t[j]);
        if (grad) grad[j] = (detail::sigmoidf(p[j]) - t[j]) * gs;
      } else {
        const float pc = clipf(p[j]);
        acc -= t[j] * std::log(pc) + (1.f - t[j]) * std::log(1.f - pc);
        if (grad) grad[j] = (pc == p[j]) ? (p[j] - t[j]) / (p[j] * (1.f - p[j])) * gs : 0.f;
      }
    }
    return acc;
  });
  return total / double(rows * cols);
}

double categorical_crossentropy(index_t rows, index_t cols, const float* p, const float* t,
                                float* grad) {
  const float scale = 1.f / float(rows);
  double total = sum_rows(rows, cols, [&](index_t i) {
    const float* tr = t + i * cols;
    return cce_row(cols, p + i * cols, [tr](index_t j) { return tr[j]; },
                   grad ? grad + i * cols : nullptr, scale);
  });
  return total / double(rows);
}

double sparse_categorical_crossentropy(index_t rows, index_t cols, const float* p,
                                       const std::int64_t* labels, float* grad) {
  const float scale = 1.f / float(rows);
  double total = sum_rows(rows, cols, [&](index_t i) {
    const std::int64_t y = labels[i];
    return cce_row(cols, p + i * cols, [y](index_t j) { return j == y ? 1.f : 0.f; },
                   grad ? grad + i * cols : nullptr, scale);
  });
  return total / double(rows);
}

namespace {

// One row of softmax_crossentropy: its loss; writes the row's probabilities to pr and gradient
// to gr (either may be nullptr).
double softmax_ce_row(index_t cols, const float* xr, const std::int64_t* label, const float* tr, float scale,
                      float* pr, float* gr) {
  const float mx = softmax_detail::row_max(cols, xr);
  // exp(x - max) goes where the probabilities or the gradient will be (the second pass then
  // scales it instead of computing exp again); the sum is in double (softmax_internal.h).
  float* e = pr ? pr : gr;
  const double sum = softmax_detail::exp_shift_sum(cols, xr, mx, e);
  // -log softmax_j = (mx - x_j) + log(sum): never form mx + log(sum) in float, whose rounding
  // (ulp(1e4) = 1e-3) would swamp a small loss. Exact for any logit size.
  const double logsum = std::log(sum);
  const float inv = float(1.0 / sum);
  double loss = 0.0;
  double tsum = 1.0;
  if (label) {
    loss = (double(mx) - xr[*label]) + logsum;
  } else {
    tsum = 0.0;
    for (index_t j = 0; j < cols; ++j) {
      loss += double(tr[j]) * ((double(mx) - xr[j]) + logsum);
      tsum += tr[j];
    }
  }
  const float tsumf = float(tsum);
  if (!e) return loss;
  // (p - t) is formed before scaling: for a sample the model already gets right p ~ t and
  // the difference is exact, where p*scale - t*scale would keep only its rounding error.
  // Branch-free loops (each vectorizes); with labels, t is 0 but at the label, so the row is
  // (p tsum - 0) scale = (p tsum) scale everywhere, and the label's entry is redone after.
  const index_t y = label ? index_t(*label) : 0;
  const float p_label = label ? e[y] * inv : 0.f;   // before the loops overwrite e
  if (pr)
    for (index_t j = 0; j < cols; ++j) pr[j] = e[j] * inv;   // e == pr: in place
  if (!gr) return loss;
  if (label) {
    if (pr) for (index_t j = 0; j < cols; ++j) gr[j] = (pr[j] * tsumf) * scale;
    else for (index_t j = 0; j < cols; ++j) gr[j] = ((gr[j] * inv) * tsumf) * scale;   // e == gr
    gr[y] = (p_label * tsumf - 1.f) * scale;
  } else {
    if (pr) for (index_t j = 0; j < cols; ++j) gr[j] = (pr[j] * tsumf - tr[j]) * scale;
    else for (index_t j = 0; j < cols; ++j) gr[j] = ((gr[j] * inv) * tsumf - tr[j]) * scale;
  }
  return loss;
}

}  // namespace

double softmax_crossentropy(index_t rows, index_t cols, const float* x, const std::int64_t* labels,
                            const float* t, float* probs, float* grad) {
  const float scale = 1.f / float(rows);
  // An output just ahead of an input (store_ahead.h: 2x slower) is written through staging rows.
  const bool stage = store_ahead(probs, x) || store_ahead(grad, x) || store_ahead(grad, probs) ||
                     store_ahead(grad, t) || store_ahead(probs, t);
  const index_t slot = 2 * (cols + kStageExtra);
  std::vector<float> staging(stage ? size_t(threads_for(rows * cols, 16384)) * size_t(slot) : 0);
  double total = sum_rows(rows, cols, [&](index_t i) {
    const float* xr = x + i * cols;
    const std::int64_t* label = labels ? labels + i : nullptr;
    const float* tr = labels ? nullptr : t + i * cols;
    float* pr = probs ? probs + i * cols : nullptr;
    float* gr = grad ? grad + i * cols : nullptr;
    if (!stage) return softmax_ce_row(cols, xr, label, tr, scale, pr, gr);
    float* mine = staging.data() + size_t(omp_get_thread_num()) * size_t(slot);
    float* ps = pr ? staging_for(mine, pr, xr, tr) : nullptr;
    float* gs = gr ? staging_for(mine + cols + kStageExtra, gr, xr, tr, ps) : nullptr;
    const double loss = softmax_ce_row(cols, xr, label, tr, scale, ps, gs);
    if (pr) copy_out(pr, ps, cols);
    if (gr) copy_out(gr, gs, cols);
    return loss;
  });
  return total / double(rows);
}

// ---------------------------------------------------------------- reference versions (double)
namespace {
// The same bounds as clipf: 1 - 1e-7 is not a float, and float32 Keras (and the fast kernels)
// clip to float(1 - 1e-7) = 1 - 2^-23, so -log(1 - p) tops out at 15.94, not 16.12.
inline double clipd(double p) { return std::min(std::max(p, double(kEps)), double(1.f - kEps)); }
inline double dsigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }

double cce_ref(index_t rows, index_t cols, const float* p, const std::vector<double>& t, float* grad) {
  double total = 0.0;
  for (index_t i = 0; i < rows; ++i) {
    double s = 0.0;
    for (index_t j = 0; j < cols; ++j) s += p[i * cols + j];
    std::vector<double> g(cols, 0.0);
    double gq = 0.0;
    for (index_t j = 0; j < cols; ++j) {
      const double q = p[i * cols + j] / s, tj = t[i * cols + j];
      total -= tj * std::log(clipd(q));
      if (tj != 0 && q == clipd(q)) g[j] = -tj / q;
      gq += g[j] * q;
    }
    if (grad)
      for (index_t j = 0; j < cols; ++j) grad[i * cols + j] = float((g[j] - gq) / s / double(rows));
  }
  return total / double(rows);
}
}  // namespace

double mse_ref(index_t rows, index_t cols, const float* p, const float* t, float* grad) {
  double total = 0.0, n = double(rows * cols);
  for (index_t j = 0; j < rows * cols; ++j) {
    const double d = double(p[j]) - t[j];
    total += d * d;
    if (grad) grad[j] = float(2.0 * d / n);
  }
  return total / n;
}

double mae_ref(index_t rows, index_t cols, const float* p, const float* t, float* grad) {
  double total = 0.0, n = double(rows * cols);
  for (index_t j = 0; j < rows * cols; ++j) {
    const double d = double(p[j]) - t[j];
    total += std::fabs(d);
    if (grad) grad[j] = float((d > 0) - (d < 0)) / float(n);
  }
  return total / n;
}

double binary_crossentropy_ref(index_t rows, index_t cols, const float* p, const float* t,
                               bool from_logits, float* grad) {
  double total = 0.0, n = double(rows * cols);
  for (index_t j = 0; j < rows * cols; ++j) {
    const double x = p[j], y = t[j];
    if (from_logits) {
      total += std::max(x, 0.0) - x * y + std::log1p(std::exp(-std::fabs(x)));
      if (grad) grad[j] = float((dsigmoid(x) - y) / n);
    } else {
      const double pc = clipd(x);
      total -= y * std::log(pc) + (1 - y) * std::log(1 - pc);
      if (grad) grad[j] = pc == x ? float((x - y) / (x * (1 - x)) / n) : 0.f;
    }
  }
  return total / n;
}

double categorical_crossentropy_ref(index_t rows, index_t cols, const float* p, const float* t,
                                    float* grad) {
  return cce_ref(rows, cols, p, std::vector<double>(t, t + rows * cols), grad);
}

double sparse_categorical_crossentropy_ref(index_t rows, index_t cols, const float* p,
                                           const std::int64_t* labels, float* grad) {
  std::vector<double> t(rows * cols, 0.0);
  for (index_t i = 0; i < rows; ++i) t[i * cols + labels[i]] = 1.0;
  return cce_ref(rows, cols, p, t, grad);
}

double softmax_crossentropy_ref(index_t rows, index_t cols, const float* x, const std::int64_t* labels,
                                const float* t, float* probs, float* grad) {
  double total = 0.0;
  for (index_t i = 0; i < rows; ++i) {
    double mx = x[i * cols], s = 0.0, tsum = 0.0;
    for (index_t j = 1; j < cols; ++j) mx = std::max<double>(mx, x[i * cols + j]);
    for (index_t j = 0; j < cols; ++j) s += std::exp(double(x[i * cols + j]) - mx);
    const double lse = mx + std::log(s);
    for (index_t j = 0; j < cols; ++j) {
      const double tj = labels ? (j == labels[i] ? 1.0 : 0.0) : t[i * cols + j];
      total += tj * (lse - x[i * cols + j]);
      tsum += tj;
    }
    for (index_t j = 0; j < cols; ++j) {
      const double pj = std::exp(double(x[i * cols + j]) - lse);
      const double tj = labels ? (j == labels[i] ? 1.0 : 0.0) : t[i * cols + j];
      if (probs) probs[i * cols + j] = float(pj);
      if (grad) grad[i * cols + j] = float((pj * tsum - tj) / double(rows));
    }
  }
  return total / double(rows);
}

}  // namespace kilnet::cpu
