// capi_internal.h — what every csrc/capi/c_api_<family>.cpp shares: argument checks that throw a
// Failure, and guarded(), which runs a C API body and turns any exception into a status code
// and this thread's last-error message. Nothing here is installed.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include "kilnet/c_api.h"
#include "kilnet/common.h"

namespace kilnet::capi {

using kilnet::index_t;

// A failed check: the status to return and the message (the function name is added later).
struct Failure {
  int status;
  std::string message;
};

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream o;
  (o << ... << parts);
  return o.str();
}

template <class... Parts>
[[noreturn]] void fail(int status, const Parts&... parts) {
  throw Failure{status, cat(parts...)};
}

// The thread-local last-error message (c_api_runtime.cpp). Neither allocates nor throws.
void set_error(const char* fn, const char* message) noexcept;
void clear_error() noexcept;

// kilnet's thread count (kilnet_set_num_threads) for one call, the caller's OpenMP count put
// back after it: a host program's own OpenMP code keeps its count, and kilnet keeps its own.
struct ThreadCount {
  int had = 0;
  ThreadCount() noexcept : had(cpu::apply_num_threads()) {}
  ~ThreadCount() { cpu::restore_num_threads(had); }
};

// Runs body(); returns KILNET_OK, or the status of whatever it threw, with the message saved.
template <class F>
int guarded(const char* fn, F&& body) noexcept {
  const ThreadCount threads;
  try {
    body();
    clear_error();
    return KILNET_OK;
  } catch (const Failure& f) {
    set_error(fn, f.message.c_str());
    return f.status;
  } catch (const std::bad_alloc&) {
    set_error(fn, "out of memory");
    return KILNET_ERR_OUT_OF_MEMORY;
  } catch (const std::invalid_argument& e) {
    set_error(fn, e.what());
    return KILNET_ERR_INVALID_VALUE;
  } catch (const std::exception& e) {
    set_error(fn, e.what());
    return KILNET_ERR_INTERNAL;
  } catch (...) {
    set_error(fn, "unknown C++ exception");
    return KILNET_ERR_INTERNAL;
  }
}

// ---------------------------------------------------------------- checks
inline void need(const char* name, const void* p) {
  if (!p) fail(KILNET_ERR_NULL_POINTER, "'", name, "' is NULL");
}

inline void positive(const char* name, std::int64_t v) {
  if (v < 1) fail(KILNET_ERR_INVALID_VALUE, "'", name, "' must be >= 1, got ", v);
}

// a * b, refusing sizes whose byte count would not fit in 63 bits.
inline std::int64_t mul(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (__builtin_mul_overflow(a, b, &r) || r > (INT64_MAX >> 3))
    fail(KILNET_ERR_INVALID_VALUE, "sizes too large: ", a, " x ", b, " elements");
  return r;
}

inline std::int64_t product(std::initializer_list<std::int64_t> sizes) {
  std::int64_t r = 1;
  for (std::int64_t s : sizes) r = mul(r, s);
  return r;
}

// The memory one argument spans: count floats (or other elements) from p.
struct Span {
  const char* name;
  const void* p;
  std::int64_t bytes;
};

template <class T>
Span span(const char* name, const T* p, std::int64_t count) {
  return {name, p, mul(count, std::int64_t(sizeof(T)))};
}

// A rows x cols matrix stored with leading dimension ld >= cols.
inline Span matrix(const char* name, const float* p, std::int64_t rows, std::int64_t cols,
                   std::int64_t ld) {
  const std::int64_t count = mul(rows - 1, ld) + cols;
  return {name, p, mul(count, std::int64_t(sizeof(float)))};
}

inline bool overlaps(const Span& a, const Span& b) {
  if (!a.p || !b.p || a.bytes == 0 || b.bytes == 0) return false;
  const auto a0 = reinterpret_cast<std::uintptr_t>(a.p), b0 = reinterpret_cast<std::uintptr_t>(b.p);
  return a0 < b0 + std::uintptr_t(b.bytes) && b0 < a0 + std::uintptr_t(a.bytes);
}

// An output must not share memory with an input the kernel reads while writing it.
inline void no_overlap(const Span& out, const Span& in) {
  if (overlaps(out, in))
    fail(KILNET_ERR_OVERLAP, "output '", out.name, "' overlaps '", in.name,
         "'; pass separate buffers");
}

// The same, except that exactly the same buffer (an in-place call) is allowed.
inline void same_or_no_overlap(const Span& out, const Span& in) {
  if (out.p != in.p) no_overlap(out, in);
}

// A KILNET_ACT_* value that names an elementwise activation (not softmax).
inline Act elementwise_act(int act) {
  if (act == KILNET_ACT_SOFTMAX)
    fail(KILNET_ERR_INVALID_VALUE, "softmax is not elementwise: use kilnet_softmax_forward/backward");
  if (act < KILNET_ACT_LINEAR || act > KILNET_ACT_TANH)
    fail(KILNET_ERR_INVALID_VALUE, "unknown activation ", act,
         "; valid: KILNET_ACT_LINEAR (0), RELU (1), SIGMOID (2), TANH (3)");
  return Act(act);
}

}  // namespace kilnet::capi
