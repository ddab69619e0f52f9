// launch.cuh — what every kernel file needs to launch: the stream cast, grid sizes, the
// TF32 switch and the after-launch check (check.cuh).
#pragma once
#include <cuda_runtime.h>
#include <algorithm>
#include "check.cuh"
#include "kilnet/common.h"

namespace kilnet::cuda {

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, capped so that huge n
// does not launch millions of blocks.
inline unsigned grid_for(index_t n, int block = 256, index_t max_blocks = 65535) {
  index_t g = (n + block - 1) / block;
  return unsigned(std::max<index_t>(1, std::min(g, max_blocks)));
}

inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

}  // namespace kilnet::cuda
