// attention_driver.h — the per-work-item FlashAttention driver (one head's run of query tiles in
// the forward, one key head in the backward), templated on the tile kernels. Included by
// attention.cpp (portable kernels), attention_avx2.cpp and attention_avx512.cpp: everything here
// is in an anonymous namespace, so each file compiles its own copy with its own ISA flags (the
// packing, masking, rescaling and write-back loops vectorise at that width, and the tile kernels
// inline), and the linker can never hand an AVX-512 body to the portable build.
//
// Tiles are computed transposed: a tile holds S^T = K_tile Q_tile^T, keys as rows and BQ query
// columns. Then every per-query quantity of the online softmax (running max m, sum l, lse, D)
// is a vector along a row and the softmax passes are vertical (8 or 16 queries per lane set).
// Kern provides static gemm, exp_cols, softmax_step and dsoftmax with the contracts in
// attention_internal.h, and transpose with pack_transposed's.
#pragma once
#include <cmath>
#include <limits>
#include "attention_internal.h"

namespace kilnet::cpu::attn_detail {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

// No std::vector, std::fill or std::min here: their out-of-line template bodies would be
// compiled with this file's ISA flags and could be the copy the linker keeps for every file.
inline index_t mn(index_t a, index_t b) { return a < b ? a : b; }

// The next n floats of a scratch block, each part starting on a 64-byte line (the block itself is
// 64-byte aligned): a zmm row load that straddles two lines costs two loads.
inline float* carve(float*& p, index_t n) {
  float* r = p;
  p += (n + 15) / 16 * 16;
  return r;
}
inline index_t rounded(index_t n) { return (n + 15) / 16 * 16; }

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
        if (!mr[0]) for (index_t i = 0; i < mq; ++i) sr[i] = kNegInf;
      } else {
        for (index_t i = 0; i < mq; ++i)
          if (!mr[i * st[2]]) sr[i] = kNegInf;
      }
    }
  }
  if (s.causal && j0 + nk - 1 > i0) {   // the tile crosses the diagonal: key j > query i is out
    for (index_t r = 0; r < nk; ++r) {
      const index_t stop = mn(mq, j0 + r - i0);   // queries i0 + i < j0 + r
      float* sr = S + r * ld;
      for (index_t i = 0; i < stop; ++i) sr[i] = kNegInf;
    }
  }
}

// The keys query tile [i0, i0 + mq) can attend: all, or j <= i under causality.
index_t key_end(const AttnShape& s, index_t i0, index_t mq) {
  return s.causal ? mn(s.Tk, i0 + mq) : s.Tk;
}

// Q (or dO) rows [i0, i0 + mq) of one head, transposed into t[h][i] (H x BQ), times `mul`;
// the padding columns are zero.
[[maybe_unused]] void pack_transposed(index_t H, index_t mq, const float* src, index_t ld, float mul, float* t) {
  for (index_t j = 0; j < H * BQ; ++j) t[j] = 0.f;
  for (index_t i = 0; i < mq; ++i) {
    const float* row = src + i * ld;
    for (index_t h = 0; h < H; ++h) t[h * BQ + i] = row[h] * mul;
  }
}

// row stride is N*H floats: for N*H*4 a multiple of 2 KiB every other row maps to the same L1
// sets, so a strided 64-row tile would not stay in L1; the copy does.
void pack_rows(index_t T, index_t H, const float* src, index_t ld, float* dst) {
  for (index_t r = 0; r < T; ++r)
    for (index_t h = 0; h < H; ++h) dst[r * H + h] = src[r * ld + h];
}

// A tile crossing the causal diagonal (key j0 + r may see query i0 + c only when c >= r + d,
// d = j0 - i0) runs its products in strips of kStrip rows that skip what causality makes zero:
// at T = 128 two of a head's three tile pairs are such tiles, a third of whose products are zero.
// Skipped terms are exact zeros (P = 0, dS = 0), so the results do not change.
constexpr index_t kStrip = 12;   // two 6-row register tiles

inline index_t clamp_to(index_t v, index_t hi) { return v < 0 ? 0 : v > hi ? hi : v; }

// Key rows x query columns (S^T = K Q^T, dP^T = V dO^T), written: row strip [ra, ra + kStrip)
// from column ra + d. The skipped entries of c are left (S: apply_masks writes -inf over them)
// or zeroed (`zero`).
template <class Kern>
void causal_keys_by_queries(index_t nk, index_t N, index_t K, const float* a, index_t a_rs, const float* b,
                            index_t b_ks, float* c, index_t c_rs, index_t d, bool zero) {
  for (index_t ra = 0; ra < nk; ra += kStrip) {
    const index_t m = mn(kStrip, nk - ra), c0 = clamp_to(ra + d, N);
    if (zero)
      for (index_t r = ra; r < ra + m; ++r)
        for (index_t j = 0; j < c0; ++j) c[r * c_rs + j] = 0.f;
    if (c0 < N) Kern::gemm(m, N - c0, K, a + ra * a_rs, a_rs, 1, b + c0, b_ks, c + ra * c_rs + c0, c_rs, false);
  }
}

// Key rows, summed over queries (dV += P^T dO, dK += dS^T Q; a(r, q) = a[r*a_rs + q]): row strip
// [ra, ra + kStrip) from query ra + d.
template <class Kern>
void causal_keys_over_queries(index_t nk, index_t N, index_t K, const float* a, index_t a_rs, const float* b,
                              index_t b_ks, float* c, index_t c_rs, index_t d) {
  for (index_t ra = 0; ra < nk; ra += kStrip) {
    const index_t m = mn(kStrip, nk - ra), k0 = clamp_to(ra + d, K);
    if (k0 < K) Kern::gemm(m, N, K - k0, a + ra * a_rs + k0, a_rs, 1, b + k0 * b_ks, b_ks, c + ra * c_rs, c_rs, true);
  }
}

// Query rows, summed over keys (O (+)= P V, dQ (+)= dS K; a(q, r) = a[q + r*a_ks]): row strip
// [ca, ca + kStrip) over keys before ca + kStrip - d.
template <class Kern>
void causal_queries_over_keys(index_t mq, index_t N, index_t K, const float* a, index_t a_ks, const float* b,
                              index_t b_ks, float* c, index_t c_rs, index_t d, bool acc) {
  for (index_t ca = 0; ca < mq; ca += kStrip) {
    const index_t m = mn(kStrip, mq - ca), k1 = clamp_to(ca + m - d, K);
    if (k1 > 0) {
      Kern::gemm(m, N, k1, a + ca, 1, a_ks, b, b_ks, c + ca * c_rs, c_rs, acc);
    } else if (!acc) {
      for (index_t r = ca; r < ca + m; ++r)
        for (index_t j = 0; j < N; ++j) c[r * c_rs + j] = 0.f;
    }
  }
}

template <class Kern>
void forward_item(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& msk,
                  float* out, float* lse, index_t b, index_t n, index_t qt0, index_t qt1, float* work) {
  const index_t H = s.H, G = s.N / s.Nk;
  const index_t ldq = s.N * H, ldk = s.Nk * H;
  // work (forward_scratch_floats): qt H*BQ | S BK*BQ | O BQ*H | m, l, alpha BQ each | vmean H | K, V Tk*H each
  float *qt = carve(work, H * BQ), *S = carve(work, BK * BQ), *O = carve(work, BQ * H);
  float *mrow = carve(work, BQ), *lrow = carve(work, BQ), *alpha = carve(work, BQ), *vmean = carve(work, H);
  float *Kp = carve(work, s.Tk * H), *Vp = carve(work, s.Tk * H);
  bool have_mean = false;
  const float* qb = q + (b * s.Tq * s.N + n) * H;
  const float* kb = k + (b * s.Tk * s.Nk + n / G) * H;
  const float* vb = v + (b * s.Tk * s.Nk + n / G) * H;
  const index_t kmax = key_end(s, (qt1 - 1) * BQ, mn(BQ, s.Tq - (qt1 - 1) * BQ));
  pack_rows(kmax, H, kb, ldk, Kp);
  pack_rows(kmax, H, vb, ldk, Vp);
  for (index_t i0 = qt0 * BQ; i0 < qt1 * BQ && i0 < s.Tq; i0 += BQ) {
    const index_t mq = mn(BQ, s.Tq - i0), mqp = (mq + 7) / 8 * 8;   // columns computed
    Kern::transpose(H, mq, qb + i0 * ldq, ldq, s.scale, qt);
    for (index_t i = 0; i < BQ; ++i) { mrow[i] = kNegInf; lrow[i] = 0.f; }
    const index_t kend = key_end(s, i0, mq);
    for (index_t j0 = 0; j0 < kend; j0 += BK) {
      const index_t nk = mn(BK, kend - j0);
      const bool diag = s.causal && j0 + nk - 1 > i0;   // crosses the diagonal
      if (diag) causal_keys_by_queries<Kern>(nk, mqp, H, Kp + j0 * H, H, qt, BQ, S, BQ, j0 - i0, false);
      else Kern::gemm(nk, mqp, H, Kp + j0 * H, H, 1, qt, BQ, S, BQ, false);
      apply_masks(s, msk, b, n, i0, mq, j0, nk, S, BQ);
      Kern::softmax_step(nk, mqp, S, BQ, mrow, lrow, alpha);
      if (j0 > 0)
        for (index_t i = 0; i < mq; ++i) {   // rescale the output rows whose max moved
          const float a = alpha[i];
          if (a != 1.f) {
            float* orow = O + i * H;
            for (index_t h = 0; h < H; ++h) orow[h] *= a;
          }
        }
      // the first key tile writes O (no clearing pass), the later ones accumulate
      if (diag) causal_queries_over_keys<Kern>(mq, H, nk, S, BQ, Vp + j0 * H, H, O, H, j0 - i0, j0 > 0);
      else Kern::gemm(mq, H, nk, S, 1, BQ, Vp + j0 * H, H, O, H, j0 > 0);
    }
    float* ob = out + (b * s.Tq * s.N + n) * H + i0 * ldq;
    float* lb = lse + (b * s.N + n) * s.Tq + i0;
    for (index_t i = 0; i < mq; ++i) {
      float* orow = ob + i * ldq;
      const float l = lrow[i];
      if (l > 0.f) {
        const float inv = 1.f / l;
        const float* src = O + i * H;
        for (index_t h = 0; h < H; ++h) orow[h] = src[h] * inv;
        lb[i] = mrow[i] + std::log(l);
      } else {   // no allowed key: the mean of v over all keys, as Keras
        if (!have_mean) {
          mean_rows(s.Tk, H, vb, ldk, vmean);
          have_mean = true;
        }
        for (index_t h = 0; h < H; ++h) orow[h] = vmean[h];
        lb[i] = kPosInf;
      }
    }
  }
}

inline index_t forward_scratch_floats(const AttnShape& s) {
  return 2 * s.H * BQ + BK * BQ + 3 * BQ + rounded(s.H) + 2 * rounded(s.Tk * s.H);
}

inline index_t backward_scratch_floats(const AttnShape& s) {
  return 4 * rounded(s.Tk * s.H) + 5 * s.H * BQ + 2 * BK * BQ + 2 * BQ + rounded(s.H);
}

template <class Kern>
void backward_item(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& msk,
                   const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv,
                   index_t b, index_t kh, float* work) {
  const index_t H = s.H, G = s.N / s.Nk;
  const index_t ldq = s.N * H, ldk = s.Nk * H;
  // work (backward_scratch_floats): dK, dV, K, V Tk*H each | qt, dOt, Q, dO, dQ H*BQ each |
  // S, dP BK*BQ each | D, lse BQ each | uni H
  float *dKa = carve(work, s.Tk * H), *dVa = carve(work, s.Tk * H), *Kp = carve(work, s.Tk * H);
  float *Vp = carve(work, s.Tk * H), *qt = carve(work, H * BQ), *dot = carve(work, H * BQ);
  float *Qp = carve(work, H * BQ), *dOp = carve(work, H * BQ), *dQ = carve(work, H * BQ);
  float *S = carve(work, BK * BQ), *dP = carve(work, BK * BQ), *Drow = carve(work, BQ), *lrow = carve(work, BQ);
  float* uni = carve(work, H);
  for (index_t h = 0; h < H; ++h) uni[h] = 0.f;
  pack_rows(s.Tk, H, k + (b * s.Tk * s.Nk + kh) * H, ldk, Kp);
  pack_rows(s.Tk, H, v + (b * s.Tk * s.Nk + kh) * H, ldk, Vp);
  for (index_t j = 0; j < s.Tk * H; ++j) { dKa[j] = 0.f; dVa[j] = 0.f; }
  for (index_t n = kh * G; n < (kh + 1) * G; ++n) {
    const index_t hoff = (b * s.Tq * s.N + n) * H;
    for (index_t i0 = 0; i0 < s.Tq; i0 += BQ) {
      const index_t mq = mn(BQ, s.Tq - i0), mqp = (mq + 7) / 8 * 8;   // columns computed
      const float* dor = dout + hoff + i0 * ldq;
      const float* orr = out + hoff + i0 * ldq;
      const float* lr = lse + (b * s.N + n) * s.Tq + i0;
      pack_rows(mq, H, q + hoff + i0 * ldq, ldq, Qp);
      pack_rows(mq, H, dor, ldq, dOp);
      Kern::transpose(H, mq, Qp, H, s.scale, qt);
      Kern::transpose(H, mq, dOp, H, 1.f, dot);
      for (index_t i = 0; i < BQ; ++i) {
        if (i >= mq) { Drow[i] = 0.f; lrow[i] = kPosInf; continue; }   // padding: P = 0
        const float* g = dOp + i * H;
        const float* o = orr + i * ldq;
        float part[16] = {};   // 16 running sums (one vector), so the dot product vectorises
        index_t h = 0;
        for (; h + 16 <= H; h += 16)
          for (int l = 0; l < 16; ++l) part[l] += g[h + l] * o[h + l];
        float d = 0.f;
        for (; h < H; ++h) d += g[h] * o[h];
        for (int l = 0; l < 16; ++l) d += part[l];
        Drow[i] = d;
        lrow[i] = lr[i];
        if (lr[i] == kPosInf)   // a row with no allowed key: out = mean(v), dv_j += dout_i / Tk
          for (index_t h = 0; h < H; ++h) uni[h] += g[h];
      }
      const index_t kend = key_end(s, i0, mq);
      for (index_t j0 = 0; j0 < kend; j0 += BK) {
        const index_t nk = mn(BK, kend - j0);
        const float* kt = Kp + j0 * H;
        const bool diag = s.causal && j0 + nk - 1 > i0;   // crosses the diagonal
        const index_t d = j0 - i0;
        // P^T = exp(K Q^T * scale + bias - lse), masked entries 0
        if (diag) causal_keys_by_queries<Kern>(nk, mqp, H, kt, H, qt, BQ, S, BQ, d, false);
        else Kern::gemm(nk, mqp, H, kt, H, 1, qt, BQ, S, BQ, false);
        apply_masks(s, msk, b, n, i0, mq, j0, nk, S, BQ);
        Kern::exp_cols(nk, mqp, S, BQ, lrow, nullptr);
        // dV += P^T dO
        if (diag) causal_keys_over_queries<Kern>(nk, H, mq, S, BQ, dOp, H, dVa + j0 * H, H, d);
        else Kern::gemm(nk, H, mq, S, BQ, 1, dOp, H, dVa + j0 * H, H, true);
        // dP^T = V dO^T;  dS^T = P^T * (dP^T - D)
        if (diag) causal_keys_by_queries<Kern>(nk, mqp, H, Vp + j0 * H, H, dot, BQ, dP, BQ, d, true);
        else Kern::gemm(nk, mqp, H, Vp + j0 * H, H, 1, dot, BQ, dP, BQ, false);
        Kern::dsoftmax(nk, mqp, S, dP, BQ, Drow);
        // dK += dS^T Q (times scale at the end);  dQ = the sum over key tiles of dS K (likewise)
        if (diag) {
          causal_keys_over_queries<Kern>(nk, H, mq, dP, BQ, Qp, H, dKa + j0 * H, H, d);
          causal_queries_over_keys<Kern>(mq, H, nk, dP, BQ, kt, H, dQ, H, d, j0 > 0);
        } else {
          Kern::gemm(nk, H, mq, dP, BQ, 1, Qp, H, dKa + j0 * H, H, true);
          Kern::gemm(mq, H, nk, dP, 1, BQ, kt, H, dQ, H, j0 > 0);
        }
      }
      if (kend == 0)
        for (index_t j = 0; j < mq * H; ++j) dQ[j] = 0.f;
      float* dqr = dq + hoff + i0 * ldq;
      for (index_t i = 0; i < mq; ++i) {
        const float* src = dQ + i * H;
        float* dst = dqr + i * ldq;
        for (index_t h = 0; h < H; ++h) dst[h] = src[h] * s.scale;
      }
    }
  }
  float* dkb = dk + (b * s.Tk * s.Nk + kh) * H;
  float* dvb = dv + (b * s.Tk * s.Nk + kh) * H;
  for (index_t h = 0; h < H; ++h) uni[h] /= float(s.Tk);
  for (index_t j = 0; j < s.Tk; ++j) {
    const float *ka = dKa + j * H, *va = dVa + j * H;
    float *kd = dkb + j * ldk, *vd = dvb + j * ldk;
    for (index_t h = 0; h < H; ++h) {
      kd[h] = ka[h] * s.scale;
      vd[h] = va[h] + uni[h];
    }
  }
}

}  // namespace
}  // namespace kilnet::cpu::attn_detail
