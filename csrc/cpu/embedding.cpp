// embedding.cpp — the embedding gather and its deterministic scatter-add (see embedding.h).
// Backward: the token positions are grouped by id, stably (token order kept inside an id):
// a counting sort when the vocabulary is not much larger than the batch, else a sort of packed
// (id, position) keys. The grouped positions are cut into one slice per thread at id
// boundaries, so every dW row is summed by exactly one thread, in token order: the same
// additions in the same order as the reference loop, whatever the thread count.
#include <algorithm>
#include <cstring>
#include <vector>
#include "kilnet/embedding.h"
#include "parallel.h"

namespace kilnet::cpu {

namespace {

template <class I>
void gather(index_t N, index_t D, const I* ids, const float* W, float* out) {
  const size_t row_bytes = size_t(D) * sizeof(float);
#pragma omp parallel for num_threads(threads_for(N * D)) schedule(static)
  for (index_t i = 0; i < N; ++i) std::memcpy(out + i * D, W + index_t(ids[i]) * D, row_bytes);
}

// order: the positions 0..N-1 grouped by id, token order kept within an id.
template <class I>
std::vector<index_t> group_by_id(index_t N, index_t V, const I* ids) {
  std::vector<index_t> order(static_cast<size_t>(N));
  if (V <= 8 * N + 1024) {   // counting sort: O(N + V)
    std::vector<index_t> next(static_cast<size_t>(V) + 1, 0);
    for (index_t i = 0; i < N; ++i) ++next[size_t(ids[i]) + 1];
    for (index_t v = 0; v < V; ++v) next[size_t(v) + 1] += next[size_t(v)];
    for (index_t i = 0; i < N; ++i) order[size_t(next[size_t(ids[i])]++)] = i;
  } else {                   // a huge vocabulary: sort (id, position) pairs, O(N log N)
    std::vector<std::pair<index_t, index_t>> key(static_cast<size_t>(N));
    for (index_t i = 0; i < N; ++i) key[size_t(i)] = {index_t(ids[i]), i};
    std::sort(key.begin(), key.end());   // pairs are distinct: the order is total
    for (index_t k = 0; k < N; ++k) order[size_t(k)] = key[size_t(k)].second;
  }
  return order;
}

template <class I>
void scatter_add(index_t N, index_t V, index_t D, const I* ids, const float* dy, float* dW) {
  if (N == 0) return;
  const std::vector<index_t> order = group_by_id(N, V, ids);
  const index_t* ord = order.data();
  const int T = int(std::min<index_t>(threads_for(N * D), N));
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    // This thread's slice of `order`, both ends moved forward to the start of an id's group.
    auto boundary = [&](index_t k) {
      while (k > 0 && k < N && ids[ord[k]] == ids[ord[k - 1]]) ++k;
      return k;
    };
    const index_t k0 = boundary(N * t / nt), k1 = boundary(N * (t + 1) / nt);
    for (index_t k = k0; k < k1;) {
      const index_t v = index_t(ids[ord[k]]);
      float* row = dW + v * D;
      for (; k < k1 && index_t(ids[ord[k]]) == v; ++k) {
        const float* g = dy + ord[k] * D;
        for (index_t j = 0; j < D; ++j) row[j] += g[j];
      }
    }
  }
}

// dW = the scatter of dy (overwritten): every row written once, untouched ids as zeros. One pass
// over dW split into vocabulary ranges, one per thread (the zeroing, which dominates for a large
// vocabulary, runs on every thread; a separate fill would run on one and touch dW twice). Each
// touched row starts as 0 + its first token's row, then adds the rest in token order: the bits
// of zeroing followed by scatter_add.
template <class I>
void scatter_set(index_t N, index_t V, index_t D, const I* ids, const float* dy, float* dW) {
  const std::vector<index_t> order = group_by_id(N, V, ids);
  const index_t* ord = order.data();
  const int T = int(std::min<index_t>(threads_for(V * D), V));
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const index_t v0 = V * t / nt, v1 = V * (t + 1) / nt;
    // the first grouped position whose id is >= v (ids ascend along order)
    auto first_at = [&](index_t v) {
      index_t lo = 0, hi = N;
      while (lo < hi) {
        const index_t mid = lo + (hi - lo) / 2;
        if (index_t(ids[ord[mid]]) < v) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    };
    index_t k = first_at(v0);
    const index_t kend = first_at(v1);
    for (index_t v = v0; v < v1;) {
      const index_t next = k < kend ? index_t(ids[ord[k]]) : v1;   // the next touched row
      if (next > v) {   // rows [v, next) have no token
        std::memset(dW + v * D, 0, size_t(next - v) * size_t(D) * sizeof(float));
        v = next;
        continue;
      }
      float* row = dW + v * D;
      const float* g = dy + ord[k] * D;
      for (index_t j = 0; j < D; ++j) row[j] = 0.f + g[j];   // 0 + (-0) is +0, as after a fill
      for (++k; k < kend && index_t(ids[ord[k]]) == v; ++k) {
        g = dy + ord[k] * D;
        for (index_t j = 0; j < D; ++j) row[j] += g[j];
      }
      ++v;
    }
  }
}

}  // namespace

void embedding_forward(index_t N, index_t, index_t D, const std::int32_t* ids, const float* W, float* out) {
  gather(N, D, ids, W, out);
}
void embedding_forward(index_t N, index_t, index_t D, const std::int64_t* ids, const float* W, float* out) {
  gather(N, D, ids, W, out);
}
void embedding_backward(index_t N, index_t V, index_t D, const std::int32_t* ids, const float* dy, float* dW) {
  scatter_add(N, V, D, ids, dy, dW);
}
void embedding_backward(index_t N, index_t V, index_t D, const std::int64_t* ids, const float* dy, float* dW) {
  scatter_add(N, V, D, ids, dy, dW);
}
void embedding_backward_set(index_t N, index_t V, index_t D, const std::int32_t* ids, const float* dy, float* dW) {
  scatter_set(N, V, D, ids, dy, dW);
}
void embedding_backward_set(index_t N, index_t V, index_t D, const std::int64_t* ids, const float* dy, float* dW) {
  scatter_set(N, V, D, ids, dy, dW);
}

// ------------------------------------------------------------------------- reference (plain loops)
namespace {

template <class I>
void gather_ref(index_t N, index_t D, const I* ids, const float* W, float* out) {
  for (index_t i = 0; i < N; ++i)
    for (index_t j = 0; j < D; ++j) out[i * D + j] = W[index_t(ids[i]) * D + j];
}

template <class I>
void scatter_add_ref(index_t N, index_t D, const I* ids, const float* dy, float* dW) {
  for (index_t i = 0; i < N; ++i)
    for (index_t j = 0; j < D; ++j) dW[index_t(ids[i]) * D + j] += dy[i * D + j];
}

}  // namespace

void embedding_forward_ref(index_t N, index_t, index_t D, const std::int32_t* ids, const float* W, float* out) {
  gather_ref(N, D, ids, W, out);
}
void embedding_forward_ref(index_t N, index_t, index_t D, const std::int64_t* ids, const float* W, float* out) {
  gather_ref(N, D, ids, W, out);
}
void embedding_backward_ref(index_t N, index_t, index_t D, const std::int32_t* ids, const float* dy, float* dW) {
  scatter_add_ref(N, D, ids, dy, dW);
}
void embedding_backward_ref(index_t N, index_t, index_t D, const std::int64_t* ids, const float* dy, float* dW) {
  scatter_add_ref(N, D, ids, dy, dW);
}
void embedding_backward_set_ref(index_t N, index_t V, index_t D, const std::int32_t* ids, const float* dy, float* dW) {
  std::fill(dW, dW + V * D, 0.f);
  scatter_add_ref(N, D, ids, dy, dW);
}
void embedding_backward_set_ref(index_t N, index_t V, index_t D, const std::int64_t* ids, const float* dy, float* dW) {
  std::fill(dW, dW + V * D, 0.f);
  scatter_add_ref(N, D, ids, dy, dW);
}

}  // namespace kilnet::cpu
