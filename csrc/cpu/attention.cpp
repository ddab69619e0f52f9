// attention.cpp — fused scaled-dot-product attention (see kilnet/attention.h): the thread team
// over the FlashAttention-style work items (attention_driver.h), the portable tile kernels, and
// the plain reference.
//
// A head's keys and values are copied contiguous once per work item (see pack_rows), Q (and dO
// in the backward) once per query tile, also transposed. Work items are (batch, head, run of
// query tiles) in the forward; (batch, key head) in the backward, which owns that head's dk and
// dv rows, so threads never write the same memory and results do not depend on the team size.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#include "attention_driver.h"
#include "attention_internal.h"
#include "kilnet/attention.h"
#include "kilnet/gemm_bf16.h"
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

struct Portable {
  static constexpr auto transpose = &pack_transposed;
  static constexpr auto gemm = &gemm_portable;
  static constexpr auto exp_cols = &exp_cols_portable;
  static constexpr auto softmax_step = &softmax_step_portable;
  static constexpr auto dsoftmax = &dsoftmax_portable;
};

}  // namespace

const Items& portable_items() {
  static const Items t{&forward_item<Portable>, &backward_item<Portable>};
  return t;
}

void mean_rows(index_t T, index_t H, const float* v, index_t ld, float* out) {
  std::vector<double> acc(size_t(H), 0.0);
  for (index_t j = 0; j < T; ++j)
    for (index_t h = 0; h < H; ++h) acc[size_t(h)] += v[j * ld + h];
  for (index_t h = 0; h < H; ++h) out[h] = float(acc[size_t(h)] / double(T));
}

}  // namespace attn_detail

namespace {

using attn_detail::BQ;
using attn_detail::Items;

const Items& items(const AttnShape& s) {
#if defined(KILNET_HAVE_AMX_BUILD)
  if (s.bf16 && std::strcmp(bf16_level(), "amx") == 0) return attn_detail::amx_items();
#endif
#if defined(KILNET_HAVE_AVX512BF16_BUILD)
  if (s.bf16 && std::strcmp(bf16_level(), "avx512bf16") == 0) return attn_detail::avx512bf16_items();
#endif
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return attn_detail::avx512_items();
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2()) return attn_detail::avx2_items();
#endif
  return attn_detail::portable_items();
}

// One thread's scratch block, its start on a 64-byte line (malloc gives 16 bytes).
struct Scratch {
  std::vector<float> buf;
  float* data;
  explicit Scratch(index_t n) : buf(size_t(n) + 16) {
    const auto a = reinterpret_cast<std::uintptr_t>(buf.data());
    data = buf.data() + ((64 - a % 64) % 64) / sizeof(float);
  }
};

int team_size(index_t tasks, index_t work) {
  const int t = threads_for(work, 1 << 14);
  return int(std::max<index_t>(1, std::min<index_t>(tasks, t)));
}

void forward_tiled(const Items& it, const AttnShape& s, const float* q, const float* k, const float* v,
                   const AttnMask& msk, float* out, float* lse) {
  const index_t nqt = (s.Tq + BQ - 1) / BQ;
  // A work item is (batch, head, run of query tiles): it packs that head's keys and values once.
  // Runs are split only as far as needed to give every thread a few items.
  const int team = team_size(s.B * s.N * nqt, s.B * s.N * s.Tq * s.Tk * s.H);
  const index_t runs = std::min(nqt, std::max<index_t>(1, (4 * team + s.B * s.N - 1) / (s.B * s.N)));
  const index_t per_run = (nqt + runs - 1) / runs, tasks = s.B * s.N * runs;
#pragma omp parallel num_threads(team)
  {
    Scratch work(attn_detail::forward_scratch_floats(s));
#pragma omp for schedule(dynamic, 1)
    for (index_t t = 0; t < tasks; ++t) {
      const index_t b = t / (s.N * runs), n = (t / runs) % s.N, run = t % runs;
      const index_t qt0 = run * per_run, qt1 = std::min(nqt, qt0 + per_run);
      if (qt0 < qt1) it.forward(s, q, k, v, msk, out, lse, b, n, qt0, qt1, work.data);
    }
  }
}

void backward_tiled(const Items& it, const AttnShape& s, const float* q, const float* k, const float* v,
                    const AttnMask& msk, const float* out, const float* lse, const float* dout, float* dq,
                    float* dk, float* dv) {
  // A work item is (batch, key head): it owns that head's dk and dv rows, so threads never write
  // the same memory and results do not depend on the team size.
  const index_t tasks = s.B * s.Nk;
#pragma omp parallel num_threads(team_size(tasks, s.B * s.N * s.Tq * s.Tk * s.H))
  {
    Scratch work(attn_detail::backward_scratch_floats(s));
#pragma omp for schedule(dynamic, 1)
    for (index_t t = 0; t < tasks; ++t)
      it.backward(s, q, k, v, msk, out, lse, dout, dq, dk, dv, t / s.Nk, t % s.Nk, work.data);
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
  forward_tiled(items(s), s, q, k, v, m, out, lse);
}

void attention_backward(const AttnShape& s, const float* q, const float* k, const float* v,
                        const AttnMask& m, const float* out, const float* lse, const float* dout,
                        float* dq, float* dk, float* dv) {
  backward_tiled(items(s), s, q, k, v, m, out, lse, dout, dq, dk, dv);
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
