// embedding.h — the Embedding layer's kernels: a row gather and its scatter-add.
//   ids: N integer ids (any shape flattened; int32 or int64), each in [0, V).
//   W: V x D (the embeddings matrix, row-major). out, dy: N x D.
// Forward: out[i, :] = W[ids[i], :].
// Backward: dW[ids[i], :] += dy[i, :] for every i (dW is accumulated into, not overwritten).
//   Deterministic: each row of dW is summed by one thread, in token order (i ascending), so the
//   bits do not depend on the thread count and equal the reference loop's.
// Backward, set: dW = 0, then the same scatter-add, in one pass over dW on every thread (what a
//   training step runs when nothing else wrote dW yet; the same bits as zeroing, then adding).
// The kernels trust the ids: the bindings refuse an id outside [0, V) before calling them.
#pragma once
#include <cstdint>
#include "kilnet/common.h"

namespace kilnet::cpu {

void embedding_forward(index_t N, index_t V, index_t D, const std::int32_t* ids, const float* W, float* out);
void embedding_forward(index_t N, index_t V, index_t D, const std::int64_t* ids, const float* W, float* out);
void embedding_backward(index_t N, index_t V, index_t D, const std::int32_t* ids, const float* dy, float* dW);
void embedding_backward(index_t N, index_t V, index_t D, const std::int64_t* ids, const float* dy, float* dW);
void embedding_backward_set(index_t N, index_t V, index_t D, const std::int32_t* ids, const float* dy, float* dW);
void embedding_backward_set(index_t N, index_t V, index_t D, const std::int64_t* ids, const float* dy, float* dW);

void embedding_forward_ref(index_t N, index_t V, index_t D, const std::int32_t* ids, const float* W, float* out);
void embedding_forward_ref(index_t N, index_t V, index_t D, const std::int64_t* ids, const float* W, float* out);
void embedding_backward_ref(index_t N, index_t V, index_t D, const std::int32_t* ids, const float* dy, float* dW);
void embedding_backward_ref(index_t N, index_t V, index_t D, const std::int64_t* ids, const float* dy, float* dW);
void embedding_backward_set_ref(index_t N, index_t V, index_t D, const std::int32_t* ids, const float* dy, float* dW);
void embedding_backward_set_ref(index_t N, index_t V, index_t D, const std::int64_t* ids, const float* dy, float* dW);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same on device pointers, run on `stream`. An id outside [0, V) is never dereferenced: its
// output row is zeroed (forward) or it is skipped (backward), and the call throws
// std::invalid_argument naming the first such id (the ids are checked on the device and the
// verdict is read back, which waits for the stream). The backward sorts (id, position) pairs
// with a stable radix sort and sums each id's rows in position order: deterministic, no atomics.
void embedding_forward(index_t N, index_t V, index_t D, const void* ids, int id_bytes, const float* W,
                       float* out, void* stream);
void embedding_backward(index_t N, index_t V, index_t D, const void* ids, int id_bytes, const float* dy,
                        float* dW, void* stream);
// dW overwritten: zeroed on the stream, then the same scatter-add.
void embedding_backward_set(index_t N, index_t V, index_t D, const void* ids, int id_bytes, const float* dy,
                            float* dW, void* stream);

}  // namespace kilnet::cuda
