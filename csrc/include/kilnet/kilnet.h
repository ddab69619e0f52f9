// kilnet.h — the whole C++ API in one include: every CPU kernel family (namespace kilnet::cpu),
// the runtime facts (SIMD level, threads) and the version. Kernels take raw pointers and sizes
// and TRUST their arguments (shapes are documented in each family's header); the checked,
// exception-free front end is the C API, kilnet/c_api.h. See docs/cpp.md.
// A new kernel family adds its header here.
#pragma once
#include "kilnet/version.h"
#include "kilnet/common.h"
#include "kilnet/gemm.h"
#include "kilnet/conv2d.h"
#include "kilnet/conv_dense.h"
#include "kilnet/activation.h"
#include "kilnet/loss.h"
#include "kilnet/optim.h"
#include "kilnet/peak.h"
#include "kilnet/attention.h"
