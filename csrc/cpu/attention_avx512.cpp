// attention_avx512.cpp — the float32 work items of attention_driver.h on the AVX-512 tile
// kernels (attention_kern_avx512.h). Compiled with the AVX-512 flags; used only when
// use_avx512().
#include "attention_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include "attention_driver.h"
#include "attention_kern_avx512.h"

namespace kilnet::cpu::attn_detail {
namespace {

struct Avx512 {
  static constexpr auto transpose = &transpose_avx512;
  static constexpr auto gemm = &gemm_avx512;
  static constexpr auto exp_cols = &exp_cols_avx512;
  static constexpr auto softmax_step = &softmax_step_avx512;
  static constexpr auto dsoftmax = &dsoftmax_avx512;
};

}  // namespace

const Items& avx512_items() {
  static const Items t{&forward_item<Avx512>, &backward_item<Avx512>};
  return t;
}

}  // namespace kilnet::cpu::attn_detail

#endif
