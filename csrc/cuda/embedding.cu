// embedding.cu — the embedding gather and its deterministic scatter-add on the GPU (see
// kilnet/embedding.h).
// Forward: one block per token copies its row; an id outside [0, V) gets a zero row and its
//   position is recorded (atomicMin: the first bad position, whatever the timing).
// Backward: (id, position) pairs are sorted by id with CUB's radix sort, which is stable, so
//   each id's positions stay ascending; the block at the start of each id's run then adds that
//   run's dy rows into dW[id] one after another, in position order, as the CPU does (no atomics:
//   the same bits every run). Bad ids are sorted past the end (key V) and skipped.
// Both read the bad-position flag back (a stream synchronization) and throw std::invalid_argument
// naming the first bad id.
#include <cub/device/device_radix_sort.cuh>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include "kilnet/embedding.h"
#include "launch.cuh"
#include "stream_buffer.cuh"

namespace kilnet::cuda {

namespace {

constexpr unsigned long long kNoBad = ~0ull;

template <class I>
__global__ void gather_kernel(index_t N, index_t V, index_t D, const I* __restrict__ ids, const float* __restrict__ W,
                              float* __restrict__ out, unsigned long long* __restrict__ bad) {
  for (index_t i = blockIdx.x; i < N; i += gridDim.x) {
    const index_t id = index_t(ids[i]);
    const bool ok = id >= 0 && id < V;
    if (!ok && threadIdx.x == 0) atomicMin(bad, (unsigned long long)i);
    const float* src = W + (ok ? id : 0) * D;
    for (index_t j = threadIdx.x; j < D; j += blockDim.x) out[i * D + j] = ok ? src[j] : 0.f;
  }
}

// key[i] = the id (V for a bad one, recorded in *bad), pos[i] = i.
template <class I>
__global__ void keys_kernel(index_t N, index_t V, const I* __restrict__ ids, unsigned* __restrict__ key,
                            unsigned* __restrict__ pos, unsigned long long* __restrict__ bad) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += index_t(gridDim.x) * blockDim.x) {
    const index_t id = index_t(ids[i]);
    const bool ok = id >= 0 && id < V;
    if (!ok) atomicMin(bad, (unsigned long long)i);
    key[i] = unsigned(ok ? id : V);
    pos[i] = unsigned(i);
  }
}

// The block whose sorted position k starts a run of equal keys adds the run's dy rows into
// dW[key], in position order: row = ((dW + dy_p1) + dy_p2) + ..., as the CPU's loop.
__global__ void run_sum_kernel(index_t N, index_t V, index_t D, const unsigned* __restrict__ key,
                               const unsigned* __restrict__ pos, const float* __restrict__ dy, float* __restrict__ dW) {
  for (index_t k = blockIdx.x; k < N; k += gridDim.x) {
    const unsigned v = key[k];
    if (v >= V || (k > 0 && key[k - 1] == v)) continue;
    index_t end = k + 1;
    while (end < N && key[end] == v) ++end;
    for (index_t j = threadIdx.x; j < D; j += blockDim.x) {
      float acc = dW[index_t(v) * D + j];
      index_t p = k;
      for (; p + 4 <= end; p += 4) {   // four loads in flight, added in order
        const float a0 = dy[index_t(pos[p]) * D + j], a1 = dy[index_t(pos[p + 1]) * D + j];
        const float a2 = dy[index_t(pos[p + 2]) * D + j], a3 = dy[index_t(pos[p + 3]) * D + j];
        acc = __fadd_rn(__fadd_rn(__fadd_rn(__fadd_rn(acc, a0), a1), a2), a3);
      }
      for (; p < end; ++p) acc = __fadd_rn(acc, dy[index_t(pos[p]) * D + j]);
      dW[index_t(v) * D + j] = acc;
    }
  }
}

unsigned block_for(index_t D) { return unsigned(std::min<index_t>(256, std::max<index_t>(32, ceil_div(D, 32) * 32))); }
unsigned rows_grid(index_t N) { return unsigned(std::max<index_t>(1, std::min<index_t>(N, 1 << 20))); }

// Reads the flag (waits for the stream); throws naming the first bad id.
void report_bad(const char* fn, const unsigned long long* bad_dev, const void* ids, int id_bytes, index_t V,
                cudaStream_t st) {
  unsigned long long bad = kNoBad;
  check(cudaMemcpyAsync(&bad, bad_dev, sizeof bad, cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync (embedding ids check)");
  check(cudaStreamSynchronize(st), "cudaStreamSynchronize (embedding ids check)");
  if (bad == kNoBad) return;
  long long id = 0;
  if (id_bytes == 4) {
    std::int32_t v = 0;
    check(cudaMemcpy(&v, static_cast<const std::int32_t*>(ids) + bad, 4, cudaMemcpyDeviceToHost), "cudaMemcpy (bad id)");
    id = v;
  } else {
    std::int64_t v = 0;
    check(cudaMemcpy(&v, static_cast<const std::int64_t*>(ids) + bad, 8, cudaMemcpyDeviceToHost), "cudaMemcpy (bad id)");
    id = v;
  }
  throw std::invalid_argument(std::string(fn) + ": id " + std::to_string(id) + " (at flat index " +
                              std::to_string(bad) + " of the ids) is out of range for a vocabulary of input_dim=" +
                              std::to_string(V) + " rows: ids must be in [0, " + std::to_string(V) + ")");
}

}  // namespace

void embedding_forward(index_t N, index_t V, index_t D, const void* ids, int id_bytes, const float* W,
                       float* out, void* stream) {
  if (N <= 0) return;
  const cudaStream_t st = as_stream(stream);
  StreamBuffer<unsigned long long> bad(1, st, "cudaMallocAsync (embedding ids check)");
  check(cudaMemsetAsync(bad.get(), 0xFF, sizeof(unsigned long long), st), "cudaMemsetAsync (embedding)");
  if (id_bytes == 4)
    gather_kernel<<<rows_grid(N), block_for(D), 0, st>>>(N, V, D, static_cast<const std::int32_t*>(ids), W, out, bad.get());
  else
    gather_kernel<<<rows_grid(N), block_for(D), 0, st>>>(N, V, D, static_cast<const std::int64_t*>(ids), W, out, bad.get());
  KILNET_CHECK_LAUNCH("embedding gather_kernel");
  report_bad("embedding_forward", bad.get(), ids, id_bytes, V, st);
}

void embedding_backward(index_t N, index_t V, index_t D, const void* ids, int id_bytes, const float* dy,
                        float* dW, void* stream) {
  if (N <= 0) return;
  if (N >= (index_t(1) << 31) || V >= (index_t(1) << 31))   // CUB's item count is an int; keys are 32-bit
    throw std::invalid_argument("embedding_backward (CUDA): at most 2^31 - 1 ids and 2^31 - 1 rows");
  const cudaStream_t st = as_stream(stream);
  // [bad flag | keys in | keys out | positions in | positions out], then CUB's temporary storage
  StreamBuffer<unsigned long long> bad(1, st, "cudaMallocAsync (embedding ids check)");
  StreamBuffer<unsigned> pairs(4 * size_t(N), st, "cudaMallocAsync (embedding sort)");
  unsigned* key_in = pairs.get();
  unsigned* key_out = key_in + N;
  unsigned* pos_in = key_out + N;
  unsigned* pos_out = pos_in + N;
  check(cudaMemsetAsync(bad.get(), 0xFF, sizeof(unsigned long long), st), "cudaMemsetAsync (embedding)");
  if (id_bytes == 4)
    keys_kernel<<<grid_for(N), 256, 0, st>>>(N, V, static_cast<const std::int32_t*>(ids), key_in, pos_in, bad.get());
  else
    keys_kernel<<<grid_for(N), 256, 0, st>>>(N, V, static_cast<const std::int64_t*>(ids), key_in, pos_in, bad.get());
  KILNET_CHECK_LAUNCH("embedding keys_kernel");
  int end_bit = 1;
  while (end_bit < 32 && (index_t(1) << end_bit) <= V) ++end_bit;   // keys are <= V
  size_t temp_bytes = 0;
  check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, key_in, key_out, pos_in, pos_out, int(N), 0, end_bit, st),
        "cub::DeviceRadixSort::SortPairs (size)");
  StreamBuffer<char> temp(temp_bytes, st, "cudaMallocAsync (embedding sort scratch)");
  check(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, key_in, key_out, pos_in, pos_out, int(N), 0, end_bit, st),
        "cub::DeviceRadixSort::SortPairs");
  run_sum_kernel<<<rows_grid(N), block_for(D), 0, st>>>(N, V, D, key_out, pos_out, dy, dW);
  KILNET_CHECK_LAUNCH("embedding run_sum_kernel");
  report_bad("embedding_backward", bad.get(), ids, id_bytes, V, st);
}

void embedding_backward_set(index_t N, index_t V, index_t D, const void* ids, int id_bytes, const float* dy,
                            float* dW, void* stream) {
  check(cudaMemsetAsync(dW, 0, size_t(V) * size_t(D) * sizeof(float), as_stream(stream)),
        "cudaMemsetAsync (embedding dW)");
  embedding_backward(N, V, D, ids, id_bytes, dy, dW, stream);
}

}  // namespace kilnet::cuda
