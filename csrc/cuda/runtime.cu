// runtime.cu — device queries for kilnet._cuda and `kilnet info`.
#include <atomic>
#include <string>
#include "check.cuh"
#include "kilnet/device.h"

namespace kilnet::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();   // clear the sticky "no driver" error; the answer is simply 0
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

int runtime_version() {
  int v = 0;
  check(cudaRuntimeGetVersion(&v), "cudaRuntimeGetVersion");
  return v;
}

std::string compiled_architectures() {
#ifdef KILNET_CUDA_ARCHS
  return KILNET_CUDA_ARCHS;
#else
  return "unknown";
#endif
}

namespace {
std::atomic<bool> g_tf32{false};
}
void set_tf32(bool on) { g_tf32.store(on); }
bool tf32() { return g_tf32.load(); }

void synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

}  // namespace kilnet::cuda
