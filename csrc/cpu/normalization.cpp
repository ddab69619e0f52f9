// normalization.cpp — batch normalization forward and backward (see normalization.h).
// Per-channel sums run over row blocks in parallel, each thread with its own double partial
// sums (C of them), combined in thread order afterwards; the elementwise passes run in
// parallel over rows, and the channel loop inside vectorizes.
#include <algorithm>
#include <cmath>
#include <vector>
#include "kilnet/normalization.h"
#include "parallel.h"

namespace kilnet::cpu {

namespace {

// out[k*C + c] = sum over rows m of the k-th quantity that add_row(m, acc) adds into acc.
template <class AddRow>
void column_sums(index_t M, index_t C, int K, AddRow add_row, double* out) {
  const int T = threads_for(M * C);
  std::vector<double> part(size_t(T) * size_t(K * C), 0.0);
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    double* acc = part.data() + size_t(t) * size_t(K * C);
    for (index_t m = M * t / nt; m < M * (t + 1) / nt; ++m) add_row(m, acc);
  }
  std::fill(out, out + K * C, 0.0);
  for (int t = 0; t < T; ++t)
    for (index_t i = 0; i < K * C; ++i) out[i] += part[size_t(t) * size_t(K * C) + size_t(i)];
}

}  // namespace

void batchnorm_forward(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                       float* moving_mean, float* moving_var, float momentum, float eps,
                       bool training, float* mean, float* invstd, float* y) {
  if (training) {
    std::vector<double> sum(static_cast<size_t>(C)), sq(static_cast<size_t>(C));
    column_sums(M, C, 1, [&](index_t m, double* acc) {
      const float* xr = x + m * C;
      for (index_t c = 0; c < C; ++c) acc[c] += xr[c];
    }, sum.data());
    for (index_t c = 0; c < C; ++c) mean[c] = float(sum[c] / double(M));
    column_sums(M, C, 1, [&](index_t m, double* acc) {
      const float* xr = x + m * C;
      for (index_t c = 0; c < C; ++c) { const double d = double(xr[c]) - mean[c]; acc[c] += d * d; }
    }, sq.data());
    for (index_t c = 0; c < C; ++c) {
      const float var = float(sq[c] / double(M));
      invstd[c] = float(1.0 / std::sqrt(double(var) + double(eps)));
      moving_mean[c] = moving_mean[c] * momentum + mean[c] * (1.f - momentum);
      moving_var[c] = moving_var[c] * momentum + var * (1.f - momentum);
    }
  } else {
    for (index_t c = 0; c < C; ++c) {
      mean[c] = moving_mean[c];
      invstd[c] = float(1.0 / std::sqrt(double(moving_var[c]) + double(eps)));
    }
  }
  std::vector<float> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  for (index_t c = 0; c < C; ++c) {
    scale[c] = gamma ? gamma[c] * invstd[c] : invstd[c];
    shift[c] = beta ? beta[c] : 0.f;
  }
  const float* sc = scale.data(); const float* sh = shift.data();
#pragma omp parallel for num_threads(threads_for(M * C)) schedule(static)
  for (index_t m = 0; m < M; ++m) {
    const float* xr = x + m * C;
    float* yr = y + m * C;
    for (index_t c = 0; c < C; ++c) yr[c] = (xr[c] - mean[c]) * sc[c] + sh[c];
  }
}

void batchnorm_backward(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* invstd, bool batch_stats, float* dx,
                        float* dgamma, float* dbeta) {
  std::vector<double> sums(size_t(2 * C));   // [sum dy | sum dy*xhat]
  if (dgamma || dbeta || (dx && batch_stats))
    column_sums(M, C, 2, [&](index_t m, double* acc) {
      const float* xr = x + m * C; const float* dyr = dy + m * C;
      for (index_t c = 0; c < C; ++c) {
        acc[c] += dyr[c];
        acc[C + c] += double(dyr[c]) * double((xr[c] - mean[c]) * invstd[c]);
      }
    }, sums.data());
  for (index_t c = 0; c < C; ++c) {
    if (dbeta) dbeta[c] += float(sums[c]);
    if (dgamma) dgamma[c] += float(sums[C + c]);
  }
  if (!dx) return;
  // dx = k*(dy - a - xhat*b): k = gamma*invstd; a, b the row means of dy and dy*xhat (0 when
  // the statistics are constants).
  std::vector<float> k(static_cast<size_t>(C)), a(static_cast<size_t>(C)), b(static_cast<size_t>(C));
  for (index_t c = 0; c < C; ++c) {
    k[c] = gamma ? gamma[c] * invstd[c] : invstd[c];
    a[c] = batch_stats ? float(sums[c] / double(M)) : 0.f;
    b[c] = batch_stats ? float(sums[C + c] / double(M)) : 0.f;
  }
  const float* kp = k.data(); const float* ap = a.data(); const float* bp = b.data();
#pragma omp parallel for num_threads(threads_for(M * C)) schedule(static)
  for (index_t m = 0; m < M; ++m) {
    const float* xr = x + m * C; const float* dyr = dy + m * C;
    float* dxr = dx + m * C;
    for (index_t c = 0; c < C; ++c)
      dxr[c] = kp[c] * (dyr[c] - ap[c] - (xr[c] - mean[c]) * invstd[c] * bp[c]);
  }
}

// ------------------------------------------------------------------------- reference (plain loops)
// Channel by channel, every sum in double, straight from the formulas.
void batchnorm_forward_ref(index_t M, index_t C, const float* x, const float* gamma,
                           const float* beta, float* moving_mean, float* moving_var,
                           float momentum, float eps, bool training, float* mean, float* invstd,
                           float* y) {
  for (index_t c = 0; c < C; ++c) {
    double mu, var;
    if (training) {
      double s = 0, q = 0;
      for (index_t m = 0; m < M; ++m) s += x[m * C + c];
      mu = s / double(M);
      for (index_t m = 0; m < M; ++m) q += (x[m * C + c] - mu) * (x[m * C + c] - mu);
      var = q / double(M);
      moving_mean[c] = moving_mean[c] * momentum + float(mu) * (1.f - momentum);
      moving_var[c] = moving_var[c] * momentum + float(var) * (1.f - momentum);
    } else {
      mu = moving_mean[c];
      var = moving_var[c];
    }
    const double is = 1.0 / std::sqrt(var + double(eps));
    mean[c] = float(mu);
    invstd[c] = float(is);
    const double g = gamma ? gamma[c] : 1.0, b = beta ? beta[c] : 0.0;
    for (index_t m = 0; m < M; ++m) y[m * C + c] = float(g * (x[m * C + c] - mu) * is + b);
  }
}

void batchnorm_backward_ref(index_t M, index_t C, const float* x, const float* dy,
                            const float* gamma, const float* mean, const float* invstd,
                            bool batch_stats, float* dx, float* dgamma, float* dbeta) {
  for (index_t c = 0; c < C; ++c) {
    double sdy = 0, sdyx = 0;
    for (index_t m = 0; m < M; ++m) {
      const double xhat = (double(x[m * C + c]) - mean[c]) * invstd[c];
      sdy += dy[m * C + c];
      sdyx += dy[m * C + c] * xhat;
    }
    if (dbeta) dbeta[c] += float(sdy);
    if (dgamma) dgamma[c] += float(sdyx);
    if (!dx) continue;
    const double g = gamma ? gamma[c] : 1.0;
    for (index_t m = 0; m < M; ++m) {
      const double xhat = (double(x[m * C + c]) - mean[c]) * invstd[c];
      const double d = batch_stats ? dy[m * C + c] - sdy / double(M) - xhat * sdyx / double(M)
                                   : double(dy[m * C + c]);
      dx[m * C + c] = float(g * invstd[c] * d);
    }
  }
}

}  // namespace kilnet::cpu
