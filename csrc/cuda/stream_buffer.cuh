// stream_buffer.cuh — scratch memory for one kernel call, stream-ordered: cudaMallocAsync on
// the call's stream when made, cudaFreeAsync on it when destroyed, so the memory goes back to
// the pool after the kernels that use it (and also when a launch in between throws).
#pragma once
#include <cuda_runtime.h>
#include <cstddef>
#include "check.cuh"

namespace kilnet::cuda {

template <class T>
class StreamBuffer {
 public:
  StreamBuffer(size_t count, cudaStream_t st, const char* what) : st_(st) {
    if (count) check(cudaMallocAsync(reinterpret_cast<void**>(&p_), count * sizeof(T), st), what);
  }
  ~StreamBuffer() {
    if (p_) cudaFreeAsync(p_, st_);   // a failure here would be sticky: the next launch check reports it
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  cudaStream_t st_;
};

}  // namespace kilnet::cuda
