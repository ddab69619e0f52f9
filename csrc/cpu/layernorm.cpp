// layernorm.cpp — layer normalization forward and backward (see kilnet/layernorm.h).
// Rows are independent, so both passes run in parallel over rows; the row work is
// layernorm_detail::row_* (AVX-512 or AVX2 in layernorm_avx512.cpp / layernorm_avx2.cpp when
// the CPU has it). dgamma/dbeta are column sums over rows: the rows are cut into blocks of a
// size fixed by (M, C) alone, each block keeps float partial sums, and the blocks are added in
// order in double. So the result has the same bits at any thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include <type_traits>
#include "kilnet/gemm_bf16.h"
#include "kilnet/layernorm.h"
#include "layernorm_internal.h"
#include "parallel.h"
#include "store_ahead.h"

namespace kilnet::cpu {

namespace layernorm_detail {

void row_forward(index_t C, const float* x, const float* gamma, const float* beta, float eps, bool rms,
                 float* mean, float* invstd, float* y) {
  double s = 0.0;
  for (index_t j = 0; j < C; ++j) s += x[j];
  const float mu = float(s / double(C));
  double q = 0.0;
  for (index_t j = 0; j < C; ++j) { const double d = double(x[j]) - mu; q += d * d; }
  const float is = float(1.0 / std::sqrt(q / double(C) + double(eps)));
  const float c = rms ? 0.f : mu;
  for (index_t j = 0; j < C; ++j)
    y[j] = (x[j] - c) * (gamma ? is * gamma[j] : is) + (beta ? beta[j] : 0.f);
  *mean = mu;
  *invstd = is;
}

void row_backward(index_t C, const float* x, const float* dy, const float* gamma, float mean, float invstd,
                  bool rms, float* dx, float* pg, float* pb) {
  const float c = rms ? 0.f : mean;
  double s1 = 0.0, s2 = 0.0;   // sum g, sum g*z
  for (index_t j = 0; j < C; ++j) {
    const float z = (x[j] - c) * invstd;
    const float g = gamma ? dy[j] * gamma[j] : dy[j];
    s1 += g;
    s2 += double(g) * z;
    if (pg) pg[j] += dy[j] * z;
    if (pb) pb[j] += dy[j];
  }
  if (!dx) return;
  const float a = rms ? 0.f : float(s1 / double(C)), b = float(s2 / double(C));
  for (index_t j = 0; j < C; ++j) {
    const float g = gamma ? dy[j] * gamma[j] : dy[j];
    dx[j] = invstd * (g - a - (x[j] - mean) * invstd * b);
  }
}

}  // namespace layernorm_detail

namespace {

using RowForward = void (*)(index_t, const float*, const float*, const float*, float, bool, float*, float*, float*);
using RowBackward = void (*)(index_t, const float*, const float*, const float*, float, float, bool, float*, float*,
                             float*);

RowForward row_forward_impl() {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return &layernorm_detail::row_forward_avx512;
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2()) return &layernorm_detail::row_forward_avx2;
#endif
  return &layernorm_detail::row_forward;
}

RowBackward row_backward_impl() {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return &layernorm_detail::row_backward_avx512;
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2()) return &layernorm_detail::row_backward_avx2;
#endif
  return &layernorm_detail::row_backward;
}

// Rows per block of the dgamma/dbeta partial sums: about 16K values, a function of C alone.
index_t block_rows(index_t C) { return std::clamp<index_t>(16384 / C, 1, 1024); }

}  // namespace

void layernorm_forward(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                       float eps, bool rms, float* mean, float* invstd, float* y) {
  const RowForward row = row_forward_impl();
  if (rms) beta = nullptr;
  const int T = threads_for(M * C);
  if (!store_ahead(y, x)) {
#pragma omp parallel for num_threads(T) schedule(static)
    for (index_t m = 0; m < M; ++m) row(C, x + m * C, gamma, beta, eps, rms, mean + m, invstd + m, y + m * C);
    return;
  }
  // y just ahead of x (store_ahead.h): each row is written to a staging row, then copied
  const index_t slot = C + kStageExtra;
  std::vector<float> stage(size_t(T) * size_t(slot));
#pragma omp parallel num_threads(T)
  {
    float* mine = stage.data() + size_t(omp_get_thread_num()) * size_t(slot);
#pragma omp for schedule(static)
    for (index_t m = 0; m < M; ++m) {
      float* t = staging_for(mine, y + m * C, x + m * C);
      row(C, x + m * C, gamma, beta, eps, rms, mean + m, invstd + m, t);
      copy_out(y + m * C, t, C);
    }
  }
}

void layernorm_forward_bf16(index_t M, index_t C, const std::uint16_t* x, const float* gamma, const float* beta,
                            float eps, bool rms, float* mean, float* invstd, std::uint16_t* y) {
  const RowForward row = row_forward_impl();
  if (rms) beta = nullptr;
  const int T = threads_for(M * C);
  // Blocks of rows widened and rounded by one conversion call each: a call per row cost as much
  // as the row itself at C = 128 (the Transformer's width). y may be x: a block is read whole
  // before any of it is written.
  const index_t R = std::clamp<index_t>(8192 / C, 1, 1024), NB = (M + R - 1) / R;
  std::vector<float> bufs(size_t(T) * size_t(2 * R * C));   // per thread: x's rows widened, y's rows
#pragma omp parallel num_threads(T)
  {
    float* xr = bufs.data() + size_t(omp_get_thread_num()) * size_t(2 * R * C);
    float* yr = xr + R * C;
#pragma omp for schedule(static)
    for (index_t b = 0; b < NB; ++b) {
      const index_t m0 = b * R, rows = std::min(R, M - m0);
      bf16_to_float(rows * C, x + m0 * C, xr);
      for (index_t r = 0; r < rows; ++r)
        row(C, xr + r * C, gamma, beta, eps, rms, mean + m0 + r, invstd + m0 + r, yr + r * C);
      float_to_bf16(rows * C, yr, y + m0 * C);
    }
  }
}

namespace {

template <class X>
void backward_rows(index_t M, index_t C, const X* x, const float* dy, const float* gamma, const float* mean,
                   const float* invstd, bool rms, float* dx, float* dgamma, float* dbeta) {
  const RowBackward row = row_backward_impl();
  const bool sums = dgamma || dbeta;
  if (!sums && !dx) return;
  const index_t R = block_rows(C), NB = (M + R - 1) / R;
  std::vector<float> part(sums ? size_t(NB) * size_t(2 * C) : 0);
  const int T = threads_for(M * C);
  // dx just ahead of x or dy (store_ahead.h): rows of dx go through a staging row
  const bool stage = store_ahead(dx, x) || store_ahead(dx, dy);
  const index_t slot = C + kStageExtra;
  std::vector<float> staging(stage ? size_t(T) * size_t(slot) : 0);
  // bfloat16 x: each block of rows widened by one conversion call into this thread's buffer
  constexpr bool widen = !std::is_same_v<X, float>;
  std::vector<float> xrows(widen ? size_t(T) * size_t(R * C) : 0);
#pragma omp parallel num_threads(T)
  {
    float* mine = stage ? staging.data() + size_t(omp_get_thread_num()) * size_t(slot) : nullptr;
    float* xbuf = widen ? xrows.data() + size_t(omp_get_thread_num()) * size_t(R * C) : nullptr;
#pragma omp for schedule(static)
    for (index_t b = 0; b < NB; ++b) {
      float* pg = sums ? part.data() + size_t(b) * size_t(2 * C) : nullptr;
      float* pb = sums ? pg + C : nullptr;
      if (sums) std::fill(pg, pg + 2 * C, 0.f);
      const index_t m0 = b * R, m1 = std::min(M, m0 + R);
      if constexpr (widen) bf16_to_float((m1 - m0) * C, x + m0 * C, xbuf);
      for (index_t m = m0; m < m1; ++m) {
        float* dxr = dx ? dx + m * C : nullptr;
        const float* xr;
        if constexpr (widen) xr = xbuf + (m - m0) * C;
        else xr = x + m * C;
        float* out = stage ? staging_for(mine, dxr, xr, dy + m * C) : dxr;
        row(C, xr, dy + m * C, gamma, mean[m], invstd[m], rms, out, pg, pb);
        if (stage) copy_out(dxr, out, C);
      }
    }
  }
  if (!sums) return;
  // Columns in chunks of kChunk, the blocks added in order into double sums per chunk: the loads
  // run along a block's partial sums (a column at a time was a strided scalar loop, 14% of the
  // time at 64x768). Each column keeps its order of additions, so the same bits.
  constexpr index_t kChunk = 64;
  const float* pp = part.data();
  const index_t W = 2 * C, NC = (W + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(threads_for(NB * C)) schedule(static)
  for (index_t c = 0; c < NC; ++c) {
    const index_t j0 = c * kChunk, nj = std::min(kChunk, W - j0);
    double acc[kChunk] = {};
    for (index_t b = 0; b < NB; ++b) {
      const float* row = pp + size_t(b) * size_t(W) + size_t(j0);
      for (index_t j = 0; j < nj; ++j) acc[j] += double(row[j]);
    }
    for (index_t j = 0; j < nj; ++j) {
      const index_t col = j0 + j;   // columns [0, C) hold dgamma's sums, [C, 2C) dbeta's
      if (col < C) { if (dgamma) dgamma[col] += float(acc[j]); }
      else if (dbeta) dbeta[col - C] += float(acc[j]);
    }
  }
}

}  // namespace

void layernorm_backward(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* invstd, bool rms, float* dx, float* dgamma,
                        float* dbeta) {
  backward_rows(M, C, x, dy, gamma, mean, invstd, rms, dx, dgamma, dbeta);
}

void layernorm_backward_bf16(index_t M, index_t C, const std::uint16_t* x, const float* dy, const float* gamma,
                             const float* mean, const float* invstd, bool rms, float* dx, float* dgamma,
                             float* dbeta) {
  backward_rows(M, C, x, dy, gamma, mean, invstd, rms, dx, dgamma, dbeta);
}

// ------------------------------------------------------------------------- reference (plain loops)
// Row by row, every sum in double, straight from the formulas.
void layernorm_forward_ref(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                           float eps, bool rms, float* mean, float* invstd, float* y) {
  for (index_t m = 0; m < M; ++m) {
    const float* xr = x + m * C;
    double s = 0.0, q = 0.0;
    for (index_t j = 0; j < C; ++j) s += xr[j];
    const double mu = s / double(C);
    for (index_t j = 0; j < C; ++j) q += (xr[j] - mu) * (xr[j] - mu);
    const double is = 1.0 / std::sqrt(q / double(C) + double(eps));
    mean[m] = float(mu);
    invstd[m] = float(is);
    for (index_t j = 0; j < C; ++j) {
      const double g = gamma ? gamma[j] : 1.0, b = (beta && !rms) ? beta[j] : 0.0;
      y[m * C + j] = float(g * (xr[j] - (rms ? 0.0 : mu)) * is + b);
    }
  }
}

void layernorm_backward_ref(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                            const float* mean, const float* invstd, bool rms, float* dx, float* dgamma,
                            float* dbeta) {
  std::vector<double> sg(static_cast<size_t>(C), 0.0), sb(static_cast<size_t>(C), 0.0);
  for (index_t m = 0; m < M; ++m) {
    const float* xr = x + m * C; const float* dyr = dy + m * C;
    const double mu = mean[m], is = invstd[m], c = rms ? 0.0 : mu;
    double s1 = 0.0, s2 = 0.0;
    for (index_t j = 0; j < C; ++j) {
      const double z = (xr[j] - c) * is, g = double(dyr[j]) * (gamma ? gamma[j] : 1.0);
      s1 += g;
      s2 += g * z;
      sg[size_t(j)] += dyr[j] * z;
      sb[size_t(j)] += dyr[j];
    }
    if (!dx) continue;
    for (index_t j = 0; j < C; ++j) {
      const double g = double(dyr[j]) * (gamma ? gamma[j] : 1.0), xhat = (xr[j] - mu) * is;
      dx[m * C + j] = float(is * (g - (rms ? 0.0 : s1 / double(C)) - xhat * s2 / double(C)));
    }
  }
  for (index_t j = 0; j < C; ++j) {
    if (dgamma) dgamma[j] += float(sg[size_t(j)]);
    if (dbeta) dbeta[j] += float(sb[size_t(j)]);
  }
}

}  // namespace kilnet::cpu
