// attention.cpp — fused scaled-dot-product attention (see kilnet/attention.h): the tiled
// FlashAttention-style driver, its portable tile kernels, and the plain reference.
//
// Tiles are computed transposed: a tile holds S^T = K_tile Q_tile^T, keys as rows and BQ query
// columns. Then every per-query quantity of the online softmax (running max m, sum l, lse, D)
// is a vector along a row and the softmax passes are vertical (8 queries per AVX2 lane set).
// A head's keys and values are copied contiguous once per work item (see pack_rows), Q (and dO
// in the backward) once per query tile, also transposed. Work items are (batch, head, run of
// query tiles) in the forward; (batch, key head) in the backward, which owns that head's dk and
// dv rows, so threads never write the same memory and results do not depend on the team size.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
#include "attention_internal.h"
#include "kilnet/attention.h"
#include "parallel.h"

namespace kilnet::cpu {

namespace attn_detail {
namespace {

void gemm_portable(index_t M, index_t N, index_t K, const float* a, index_t a_rs, index_t a_ks,
                   const float* b, index_t b_ks, float* c, index_t c_rs, bool accumulate) {
  for (index_t r = 0; r < M; ++r) {
    float* cr = c + r * c_rs;
    if (!accumulate) std::fill(cr, cr + N, 0.f);
    for (index_t k = 0; k < K; ++k) {
      const float av = a[r * a_rs + k * a_ks];
      const float* br = b + k * b_ks;
      for (index_t j = 0; j < N; ++j) cr[j] += av * br[j];
    }
  }
}

void exp_cols_portable(index_t M, index_t N, float* S, index_t ld, const float* shift, float* colsum) {
  for (index_t r = 0; r < M; ++r) {
    float* sr = S + r * ld;
    for (index_t i = 0; i < N; ++i) sr[i] = std::exp(sr[i] - shift[i]);
    if (colsum)
      for (index_t i = 0; i < N; ++i) colsum[i] += sr[i];
  }
}

void softmax_step_portable(index_t M, index_t N, float* S, index_t ld, float* m, float* l, float* alpha) {
  std::vector<float> shift(static_cast<size_t>(N));
  for (index_t i = 0; i < N; ++i) {
    float mx = m[i];
    for (index_t r = 0; r < M; ++r) mx = std::max(mx, S[r * ld + i]);
    shift[size_t(i)] = mx == -HUGE_VALF ? 0.f : mx;   // no finite logit yet: exp(-inf) = 0
    alpha[i] = std::exp(m[i] - shift[size_t(i)]);
    m[i] = mx;
    l[i] *= alpha[i];
  }
  exp_cols_portable(M, N, S, ld, shift.data(), l);
}

void dsoftmax_portable(index_t M, index_t N, const float* P, float* dP, index_t ld, const float* D) {
  for (index_t r = 0; r < M; ++r)
    for (index_t i = 0; i < N; ++i) dP[r * ld + i] = P[r * ld + i] * (dP[r * ld + i] - D[i]);
}

}  // namespace

const TileKernels& portable_kernels() {
  static const TileKernels t{&gemm_portable, &exp_cols_portable, &softmax_step_portable, &dsoftmax_portable};
  return t;
}

}  // namespace attn_detail

namespace {

using attn_detail::TileKernels;
constexpr index_t BQ = 64;   // query columns of a tile (a multiple of 8: exp_cols' lanes)
constexpr index_t BK = 64;   // key rows of a tile (48/96/128 and 48/96 query columns: no faster)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

const TileKernels& tile_kernels() {
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2()) return attn_detail::avx2_kernels();
#endif
  return attn_detail::portable_kernels();
}

// Adds the bias to the tile S^T (nk key rows from j0, mq query columns from i0, row stride ld)
// and writes -inf where the mask or causality forbids the pair. Broadcast axes have stride 0:
// a per-key value (stride over i is 0) is one scalar for the whole row.
void apply_masks(const AttnShape& s, const AttnMask& m, index_t b, index_t n, index_t i0, index_t mq,
                 index_t j0, index_t nk, float* S, index_t ld) {
  if (m.bias) {
    const index_t* st = m.bias_stride;
    const float* base = m.bias + b * st[0] + n * st[1] + i0 * st[2];
    for (index_t r = 0; r < nk; ++r) {
      const float* br = base + (j0 + r) * st[3];
      float* sr = S + r * ld;
      if (st[2] == 0) {
        const float x = br[0];
        for (index_t i = 0; i < mq; ++i) sr[i] += x;
      } else {
        for (index_t i = 0; i < mq; ++i) sr[i] += br[i * st[2]];
      }
    }
  }
  if (m.mask) {
    const index_t* st = m.mask_stride;
    const std::uint8_t* base = m.mask + b * st[0] + n * st[1] + i0 * st[2];
    for (index_t r = 0; r < nk; ++r) {
      const std::uint8_t* mr = base + (j0 + r) * st[3];
      float* sr = S + r * ld;
      if (st[2] == 0) {
        if (!mr[0]) std::fill(sr, sr + mq, kNegInf);
      } else {
        for (index_t i = 0; i < mq; ++i)
          if (!mr[i * st[2]]) sr[i] = kNegInf;
      }
    }
  }
  if (s.causal && j0 + nk - 1 > i0) {   // the tile crosses the diagonal: key j > query i is out
    for (index_t r = 0; r < nk; ++r) {
      const index_t stop = std::min(mq, j0 + r - i0);   // queries i0 + i < j0 + r
      float* sr = S + r * ld;
      for (index_t i = 0; i < stop; ++i) sr[i] = kNegInf;
    }
  }
}

// The keys query tile [i0, i0 + mq) can attend: all, or j <= i under causality.
index_t key_end(const AttnShape& s, index_t i0, index_t mq) {
  return s.causal ? std::min(s.Tk, i0 + mq) : s.Tk;
}

// The rows' mean of v over all Tk keys: the output of a row with no allowed key (Keras).
void mean_rows(index_t T, index_t H, const float* v, index_t ld, float* out) {
  std::vector<double> acc(size_t(H), 0.0);
  for (index_t j = 0; j < T; ++j)
    for (index_t h = 0; h < H; ++h) acc[size_t(h)] += v[j * ld + h];
  for (index_t h = 0; h < H; ++h) out[h] = float(acc[size_t(h)] / double(T));
}

// Q (or dO) rows [i0, i0 + mq) of one head, transposed into t[h][i] (H x BQ), times `mul`;
// the padding columns are zero.
void pack_transposed(index_t H, index_t mq, const float* src, index_t ld, float mul, float* t) {
  std::fill(t, t + H * BQ, 0.f);
  for (index_t i = 0; i < mq; ++i) {
    const float* row = src + i * ld;
    for (index_t h = 0; h < H; ++h) t[h * BQ + i] = row[h] * mul;
  }
}

int team_size(index_t tasks, index_t work) {
  const int t = threads_for(work, 1 << 14);
  return int(std::max<index_t>(1, std::min<index_t>(tasks, t)));
}

// Rows [0, T) of one head of a BTNH array (row stride ld) copied contiguous (T x H). The arrays'
// row stride is N*H floats: for N*H*4 a multiple of 2 KiB every other row maps to the same L1
// sets, so a strided 64-row tile would not stay in L1; the copy does.
void pack_rows(index_t T, index_t H, const float* src, index_t ld, float* dst) {
  for (index_t r = 0; r < T; ++r) std::copy(src + r * ld, src + r * ld + H, dst + r * H);
}

void forward_tiled(const TileKernels& kern, const AttnShape& s, const float* q, const float* k,
                   const float* v, const AttnMask& msk, float* out, float* lse) {
  const index_t H = s.H, G = s.N / s.Nk, nqt = (s.Tq + BQ - 1) / BQ;
  const index_t ldq = s.N * H, ldk = s.Nk * H;
  // A work item is (batch, head, run of query tiles): it packs that head's keys and values once.
  // Runs are split only as far as needed to give every thread a few items.
  const int team = team_size(s.B * s.N * nqt, s.B * s.N * s.Tq * s.Tk * H);
  const index_t runs = std::min(nqt, std::max<index_t>(1, (4 * team + s.B * s.N - 1) / (s.B * s.N)));
  const index_t per_run = (nqt + runs - 1) / runs, tasks = s.B * s.N * runs;
#pragma omp parallel num_threads(team)
  {
    std::vector<float> qt(size_t(H * BQ)), S(size_t(BK * BQ)), O(size_t(BQ * H)), vmean;
    std::vector<float> mrow(BQ), lrow(BQ), alpha(BQ), Kp, Vp;
#pragma omp for schedule(dynamic, 1)
    for (index_t t = 0; t < tasks; ++t) {
      const index_t b = t / (s.N * runs), n = (t / runs) % s.N, run = t % runs;
      const index_t qt0 = run * per_run, qt1 = std::min(nqt, qt0 + per_run);
      if (qt0 >= qt1) continue;
      const float* qb = q + (b * s.Tq * s.N + n) * H;
      const float* kb = k + (b * s.Tk * s.Nk + n / G) * H;
      const float* vb = v + (b * s.Tk * s.Nk + n / G) * H;
      const index_t kmax = key_end(s, (qt1 - 1) * BQ, std::min(BQ, s.Tq - (qt1 - 1) * BQ));
      Kp.resize(size_t(kmax * H));
      Vp.resize(size_t(kmax * H));
      pack_rows(kmax, H, kb, ldk, Kp.data());
      pack_rows(kmax, H, vb, ldk, Vp.data());
      vmean.clear();
      for (index_t i0 = qt0 * BQ; i0 < qt1 * BQ && i0 < s.Tq; i0 += BQ) {
        const index_t mq = std::min(BQ, s.Tq - i0), mqp = (mq + 7) / 8 * 8;   // columns computed
        pack_transposed(H, mq, qb + i0 * ldq, ldq, s.scale, qt.data());
        std::fill(mrow.begin(), mrow.end(), kNegInf);
        std::fill(lrow.begin(), lrow.end(), 0.f);
        std::fill(O.begin(), O.end(), 0.f);
        const index_t kend = key_end(s, i0, mq);
        for (index_t j0 = 0; j0 < kend; j0 += BK) {
          const index_t nk = std::min(BK, kend - j0);
          kern.gemm(nk, mqp, H, Kp.data() + j0 * H, H, 1, qt.data(), BQ, S.data(), BQ, false);
          apply_masks(s, msk, b, n, i0, mq, j0, nk, S.data(), BQ);
          kern.softmax_step(nk, mqp, S.data(), BQ, mrow.data(), lrow.data(), alpha.data());
          for (index_t i = 0; i < mq; ++i)   // rescale the output rows whose max moved
            if (alpha[size_t(i)] != 1.f) {
              float* orow = O.data() + i * H;
              const float a = alpha[size_t(i)];
              for (index_t h = 0; h < H; ++h) orow[h] *= a;
            }
          kern.gemm(mq, H, nk, S.data(), 1, BQ, Vp.data() + j0 * H, H, O.data(), H, true);
        }
        float* ob = out + (b * s.Tq * s.N + n) * H + i0 * ldq;
        float* lb = lse + (b * s.N + n) * s.Tq + i0;
        for (index_t i = 0; i < mq; ++i) {
          float* orow = ob + i * ldq;
          const float l = lrow[size_t(i)];
          if (l > 0.f) {
            const float inv = 1.f / l;
            for (index_t h = 0; h < H; ++h) orow[h] = O[size_t(i * H + h)] * inv;
            lb[i] = mrow[size_t(i)] + std::log(l);
          } else {   // no allowed key: the mean of v over all keys, as Keras
            if (vmean.empty()) {
              vmean.resize(size_t(H));
              mean_rows(s.Tk, H, vb, ldk, vmean.data());
            }
            std::copy(vmean.begin(), vmean.end(), orow);
            lb[i] = kPosInf;
          }
        }
      }
    }
  }
}

void backward_tiled(const TileKernels& kern, const AttnShape& s, const float* q, const float* k,
                    const float* v, const AttnMask& msk, const float* out, const float* lse,
                    const float* dout, float* dq, float* dk, float* dv) {
  const index_t H = s.H, G = s.N / s.Nk;
  const index_t ldq = s.N * H, ldk = s.Nk * H, tasks = s.B * s.Nk;
#pragma omp parallel num_threads(team_size(tasks, s.B * s.N * s.Tq * s.Tk * H))
  {
    std::vector<float> dKa(size_t(s.Tk * H)), dVa(size_t(s.Tk * H)), Kp(size_t(s.Tk * H)), Vp(size_t(s.Tk * H));
    std::vector<float> qt(size_t(H * BQ)), dot(size_t(H * BQ)), Qp(size_t(BQ * H)), dOp(size_t(BQ * H));
    std::vector<float> S(size_t(BK * BQ)), dP(size_t(BK * BQ)), dQ(size_t(BQ * H));
    std::vector<float> Drow(BQ), lrow(BQ);
    std::vector<double> uni(static_cast<size_t>(H));
#pragma omp for schedule(dynamic, 1)
    for (index_t t = 0; t < tasks; ++t) {
      const index_t b = t / s.Nk, kh = t % s.Nk;
      pack_rows(s.Tk, H, k + (b * s.Tk * s.Nk + kh) * H, ldk, Kp.data());
      pack_rows(s.Tk, H, v + (b * s.Tk * s.Nk + kh) * H, ldk, Vp.data());
      std::fill(dKa.begin(), dKa.end(), 0.f);
      std::fill(dVa.begin(), dVa.end(), 0.f);
      std::fill(uni.begin(), uni.end(), 0.0);
      for (index_t n = kh * G; n < (kh + 1) * G; ++n) {
        const index_t hoff = (b * s.Tq * s.N + n) * H;
        for (index_t i0 = 0; i0 < s.Tq; i0 += BQ) {
          const index_t mq = std::min(BQ, s.Tq - i0), mqp = (mq + 7) / 8 * 8;   // columns computed
          const float* dor = dout + hoff + i0 * ldq;
          const float* orr = out + hoff + i0 * ldq;
          const float* lr = lse + (b * s.N + n) * s.Tq + i0;
          pack_rows(mq, H, q + hoff + i0 * ldq, ldq, Qp.data());
          pack_rows(mq, H, dor, ldq, dOp.data());
          pack_transposed(H, mq, Qp.data(), H, s.scale, qt.data());
          pack_transposed(H, mq, dOp.data(), H, 1.f, dot.data());
          for (index_t i = 0; i < BQ; ++i) {
            if (i >= mq) { Drow[size_t(i)] = 0.f; lrow[size_t(i)] = kPosInf; continue; }   // padding: P = 0
            float d = 0.f;
            for (index_t h = 0; h < H; ++h) d += dOp[size_t(i * H + h)] * orr[i * ldq + h];
            Drow[size_t(i)] = d;
            lrow[size_t(i)] = lr[i];
            if (lr[i] == kPosInf)   // a row with no allowed key: out = mean(v), dv_j += dout_i / Tk
              for (index_t h = 0; h < H; ++h) uni[size_t(h)] += dOp[size_t(i * H + h)];
          }
          std::fill(dQ.begin(), dQ.end(), 0.f);
          const index_t kend = key_end(s, i0, mq);
          for (index_t j0 = 0; j0 < kend; j0 += BK) {
            const index_t nk = std::min(BK, kend - j0);
            const float* kt = Kp.data() + j0 * H;
            // P^T = exp(K Q^T * scale + bias - lse), masked entries 0
            kern.gemm(nk, mqp, H, kt, H, 1, qt.data(), BQ, S.data(), BQ, false);
            apply_masks(s, msk, b, n, i0, mq, j0, nk, S.data(), BQ);
            kern.exp_cols(nk, mqp, S.data(), BQ, lrow.data(), nullptr);
            // dV += P^T dO
            kern.gemm(nk, H, mq, S.data(), BQ, 1, dOp.data(), H, dVa.data() + j0 * H, H, true);
            // dP^T = V dO^T;  dS^T = P^T * (dP^T - D)
            kern.gemm(nk, mqp, H, Vp.data() + j0 * H, H, 1, dot.data(), BQ, dP.data(), BQ, false);
            kern.dsoftmax(nk, mqp, S.data(), dP.data(), BQ, Drow.data());
            // dK += dS^T Q (times scale at the end);  dQ += dS K (likewise)
            kern.gemm(nk, H, mq, dP.data(), BQ, 1, Qp.data(), H, dKa.data() + j0 * H, H, true);
            kern.gemm(mq, H, nk, dP.data(), 1, BQ, kt, H, dQ.data(), H, true);
          }
          float* dqr = dq + hoff + i0 * ldq;
          for (index_t i = 0; i < mq; ++i)
            for (index_t h = 0; h < H; ++h) dqr[i * ldq + h] = dQ[size_t(i * H + h)] * s.scale;
        }
      }
      float* dkb = dk + (b * s.Tk * s.Nk + kh) * H;
      float* dvb = dv + (b * s.Tk * s.Nk + kh) * H;
      for (index_t j = 0; j < s.Tk; ++j)
        for (index_t h = 0; h < H; ++h) {
          dkb[j * ldk + h] = dKa[size_t(j * H + h)] * s.scale;
          dvb[j * ldk + h] = dVa[size_t(j * H + h)] + float(uni[size_t(h)] / double(s.Tk));
        }
    }
  }
}

// ---- the reference: one query row at a time, sums in double --------------------------------

// logits of row i of head n (allowed ones; -inf elsewhere) into srow (Tk); returns whether any
// key is allowed with a finite logit.
bool ref_logits(const AttnShape& s, const AttnMask& m, index_t b, index_t n, index_t i,
                const float* qrow, const float* kb, index_t ldk, double* srow) {
  bool any = false;
  for (index_t j = 0; j < s.Tk; ++j) {
    bool ok = !(s.causal && j > i);
    if (ok && m.mask) {
      const index_t* st = m.mask_stride;
      ok = m.mask[b * st[0] + n * st[1] + i * st[2] + j * st[3]] != 0;
    }
    if (!ok) { srow[j] = -HUGE_VAL; continue; }
    double d = 0.0;
    for (index_t h = 0; h < s.H; ++h) d += double(qrow[h]) * kb[j * ldk + h];
    d *= s.scale;
    if (m.bias) {
      const index_t* st = m.bias_stride;
      d += m.bias[b * st[0] + n * st[1] + i * st[2] + j * st[3]];
    }
    srow[j] = d;
    any |= d != -HUGE_VAL;
  }
  return any;
}

// softmax of the row in place; returns the log of the normaliser (max + log sum)
double ref_softmax(index_t T, double* srow) {
  double mx = -HUGE_VAL;
  for (index_t j = 0; j < T; ++j) mx = std::max(mx, srow[j]);
  double sum = 0.0;
  for (index_t j = 0; j < T; ++j) { srow[j] = std::exp(srow[j] - mx); sum += srow[j]; }
  for (index_t j = 0; j < T; ++j) srow[j] /= sum;
  return mx + std::log(sum);
}

}  // namespace

void attention_forward(const AttnShape& s, const float* q, const float* k, const float* v,
                       const AttnMask& m, float* out, float* lse) {
  forward_tiled(tile_kernels(), s, q, k, v, m, out, lse);
}

void attention_backward(const AttnShape& s, const float* q, const float* k, const float* v,
                        const AttnMask& m, const float* out, const float* lse, const float* dout,
                        float* dq, float* dk, float* dv) {
  backward_tiled(tile_kernels(), s, q, k, v, m, out, lse, dout, dq, dk, dv);
}

void attention_forward_ref(const AttnShape& s, const float* q, const float* k, const float* v,
                           const AttnMask& m, float* out, float* lse) {
  const index_t H = s.H, G = s.N / s.Nk, ldq = s.N * H, ldk = s.Nk * H;
#pragma omp parallel for schedule(static)
  for (index_t bn = 0; bn < s.B * s.N; ++bn) {
    const index_t b = bn / s.N, n = bn % s.N;
    const float* kb = k + (b * s.Tk * s.Nk + n / G) * H;
    const float* vb = v + (b * s.Tk * s.Nk + n / G) * H;
    std::vector<double> srow(static_cast<size_t>(s.Tk)), acc(static_cast<size_t>(H));
    for (index_t i = 0; i < s.Tq; ++i) {
      const float* qrow = q + (b * s.Tq * s.N + n) * H + i * ldq;
      float* orow = out + (b * s.Tq * s.N + n) * H + i * ldq;
      const bool any = ref_logits(s, m, b, n, i, qrow, kb, ldk, srow.data());
      double l = HUGE_VAL;
      if (any) l = ref_softmax(s.Tk, srow.data());
      else std::fill(srow.begin(), srow.end(), 1.0 / double(s.Tk));   // Keras: uniform
      std::fill(acc.begin(), acc.end(), 0.0);
      for (index_t j = 0; j < s.Tk; ++j)
        for (index_t h = 0; h < H; ++h) acc[size_t(h)] += srow[size_t(j)] * vb[j * ldk + h];
      for (index_t h = 0; h < H; ++h) orow[h] = float(acc[size_t(h)]);
      lse[(b * s.N + n) * s.Tq + i] = float(l);
    }
  }
}

void attention_backward_ref(const AttnShape& s, const float* q, const float* k, const float* v,
                            const AttnMask& m, const float* /*out*/, const float* /*lse*/,
                            const float* dout, float* dq, float* dk, float* dv) {
  // The reference recomputes the probabilities from scratch (it does not trust out or lse).
  const index_t H = s.H, G = s.N / s.Nk, ldq = s.N * H, ldk = s.Nk * H;
#pragma omp parallel for schedule(static)
  for (index_t t = 0; t < s.B * s.Nk; ++t) {
    const index_t b = t / s.Nk, kh = t % s.Nk;
    const float* kb = k + (b * s.Tk * s.Nk + kh) * H;
    const float* vb = v + (b * s.Tk * s.Nk + kh) * H;
    std::vector<double> p(size_t(s.Tk)), ds(size_t(s.Tk)), dK(size_t(s.Tk * H), 0.0), dV(size_t(s.Tk * H), 0.0);
    for (index_t n = kh * G; n < (kh + 1) * G; ++n)
      for (index_t i = 0; i < s.Tq; ++i) {
        const float* qrow = q + (b * s.Tq * s.N + n) * H + i * ldq;
        const float* gro = dout + (b * s.Tq * s.N + n) * H + i * ldq;
        float* dqrow = dq + (b * s.Tq * s.N + n) * H + i * ldq;
        if (!ref_logits(s, m, b, n, i, qrow, kb, ldk, p.data())) {
          for (index_t j = 0; j < s.Tk; ++j)
            for (index_t h = 0; h < H; ++h) dV[size_t(j * H + h)] += double(gro[h]) / double(s.Tk);
          std::fill(dqrow, dqrow + H, 0.f);
          continue;
        }
        ref_softmax(s.Tk, p.data());
        double D = 0.0;
        for (index_t j = 0; j < s.Tk; ++j) {
          double dp = 0.0;
          for (index_t h = 0; h < H; ++h) dp += double(gro[h]) * vb[j * ldk + h];
          ds[size_t(j)] = dp;
          D += p[size_t(j)] * dp;
        }
        for (index_t h = 0; h < H; ++h) {
          double acc = 0.0;
          for (index_t j = 0; j < s.Tk; ++j) {
            const double d = p[size_t(j)] * (ds[size_t(j)] - D);
            acc += d * kb[j * ldk + h];
            dK[size_t(j * H + h)] += d * s.scale * qrow[h];
            dV[size_t(j * H + h)] += p[size_t(j)] * gro[h];
          }
          dqrow[h] = float(acc * s.scale);
        }
      }
    float* dkb = dk + (b * s.Tk * s.Nk + kh) * H;
    float* dvb = dv + (b * s.Tk * s.Nk + kh) * H;
    for (index_t j = 0; j < s.Tk; ++j)
      for (index_t h = 0; h < H; ++h) {
        dkb[j * ldk + h] = float(dK[size_t(j * H + h)]);
        dvb[j * ldk + h] = float(dV[size_t(j * H + h)]);
      }
  }
}

}  // namespace kilnet::cpu
