// check.cuh — the launch/check helper every .cu file uses: an error becomes a
// std::runtime_error that names the call or kernel, never an exit().
#pragma once
#include <cuda_runtime.h>
#include <stdexcept>
#include <string>

namespace kilnet::cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("kilnet CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

// After a kernel launch: catches bad launch configurations at once.
#define KILNET_CHECK_LAUNCH(name) ::kilnet::cuda::check(cudaGetLastError(), name)

}  // namespace kilnet::cuda
