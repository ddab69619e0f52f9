/* c_api.h — kilnet's kernels as plain C functions, for C and any FFI (Rust, Go, ctypes, ...).
 *
 * The same kernels as the C++ API (kilnet/gemm.h, conv2d.h, ...), with two differences:
 *   - every argument is checked (NULL pointers, sizes < 1, shapes that do not agree, outputs
 *     that overlap inputs, out-of-range labels and enum values) before a kernel runs;
 *   - nothing throws: each function returns an int status, KILNET_OK (0) or a KILNET_ERR_*
 *     category, and kilnet_last_error() gives the message of this thread's last failed call.
 * When a check fails (NULL_POINTER, INVALID_VALUE, SHAPE, OVERLAP) no output has been written;
 * after OUT_OF_MEMORY or INTERNAL, raised inside a kernel, outputs may be partly written.
 *
 * Conventions (the C++ API's): float32 arrays, row-major (C order), contiguous unless a leading
 * dimension says otherwise; sizes are int64_t; activations are channels-last (NHWC); weights
 * have Keras's layouts (Dense (in, units), Conv2D (kh, kw, in, out)). Gradients named d<name>
 * ACCUMULATE (+=) unless a comment says "overwritten"; zero them yourself. Functions may run on
 * several OpenMP threads (kilnet_set_num_threads). Stateless: no handles, nothing to free.
 *
 * Shape legend: M N K matrix sizes; rows x cols for row-wise functions (softmax and the losses
 * work along the last axis: rows = product of the leading axes); n element count.
 *
 * Adding a kernel family: one section here and one csrc/capi/c_api_<family>.cpp.
 * C99; link with libkilnet (CMake: kilnet::kernels_shared or kilnet::kernels).
 */
#ifndef KILNET_C_API_H
#define KILNET_C_API_H

#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define KILNET_API __attribute__((visibility("default")))
#else
#define KILNET_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status and errors ------- */

#define KILNET_C_API_VERSION 1 /* bumped when a signature changes */

enum kilnet_status {
  KILNET_OK = 0,
  KILNET_ERR_NULL_POINTER = 1,   /* a required pointer argument is NULL */
  KILNET_ERR_INVALID_VALUE = 2,  /* a size < 1, a bad enum, stride, label, step, thread count */
  KILNET_ERR_SHAPE = 3,          /* sizes that do not agree (leading dimensions, conv output) */
  KILNET_ERR_OVERLAP = 4,        /* an output shares memory with an input it must not alias */
  KILNET_ERR_OUT_OF_MEMORY = 5,  /* a kernel could not allocate its scratch buffers */
  KILNET_ERR_INTERNAL = 6        /* any other failure inside a kernel (a bug: please report) */
};

/* The message of the last call on this thread that failed, naming the function and the
 * argument, e.g. "kilnet_gemm: lda must be >= 3 (K: A is M x K), got 2". "" when this thread's
 * last call of a status-returning function succeeded (the getters below neither set nor clear
 * it). The pointer stays valid until this thread's next status-returning kilnet call. */
KILNET_API const char* kilnet_last_error(void);

/* A constant name for a status code: "KILNET_ERR_SHAPE"; "unknown status" for others. */
KILNET_API const char* kilnet_status_name(int status);

/* ---------------------------------------------------------------- runtime ----------------- */

KILNET_API const char* kilnet_version(void);      /* "0.1.0" */
KILNET_API int kilnet_c_api_version(void);        /* KILNET_C_API_VERSION of the library */
KILNET_API const char* kilnet_simd_level(void);   /* "avx512", "avx2" or "scalar": the kernel path in use */
KILNET_API const char* kilnet_build_info(void);   /* compiler, build type, OpenMP version */
KILNET_API int kilnet_get_num_threads(void);      /* OpenMP threads the kernels use */
/* n >= 1: threads for the kernels called from this thread afterwards (OpenMP's nthreads-var;
 * the default is all cores, or $OMP_NUM_THREADS). */
KILNET_API int kilnet_set_num_threads(int n);

/* ---------------------------------------------------------------- c_api_gemm -------------- */

/* C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C[M,N] (+ bias[N] added to every row).
 *   A: M x K with lda >= K, or, when trans_a != 0, A is stored K x M with lda >= M.
 *   B: K x N with ldb >= N, or, when trans_b != 0, B is stored N x K with ldb >= K.
 *   C: M x N with ldc >= N; must not overlap A, B or bias. beta == 0: C is not read.
 *   bias: N floats or NULL.  M, N, K >= 1. */
KILNET_API int kilnet_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                           const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                           float* C, int64_t ldc, const float* bias);

/* db[N] += sum over the M rows of dy[M,N] (the bias gradient of y = x.W + b). */
KILNET_API int kilnet_bias_backward(int64_t M, int64_t N, const float* dy, float* db);

/* ---------------------------------------------------------------- c_api_conv2d ------------ */

/* 2-D convolution (cross-correlation, as Keras computes it), NHWC activations, RSCK weights:
 *   x: N x H x W x C    w: R x S x C x K    b: K (or NULL)    y: N x P x Q x K
 *   y[n,p,q,k] = b[k] + sum_{r,s,c} x[n, p*stride_h - pad_h + r*dilation_h,
 *                                      q*stride_w - pad_w + s*dilation_w, c] * w[r,s,c,k]
 * pad_h/pad_w are the top/left padding; P and Q imply the bottom/right padding, which may be
 * at most max(pad, (kernel extent) - 1). Input positions outside the image read as zero. */
typedef struct kilnet_conv2d_shape {
  int64_t N, H, W, C; /* input */
  int64_t K, R, S;    /* K filters of R x S */
  int64_t P, Q;       /* output height and width */
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w; /* top, left */
  int64_t dilation_h, dilation_w;
} kilnet_conv2d_shape;

enum kilnet_padding { KILNET_PADDING_VALID = 0, KILNET_PADDING_SAME = 1 };

/* Fills *s for a Keras Conv2D: P, Q, pad_h, pad_w from the input size, kernel, strides,
 * dilation and padding ('valid': no padding; 'same': P = ceil(H/stride_h), the odd padding
 * pixel at the bottom/right). Sizes, strides and dilations >= 1. */
KILNET_API int kilnet_conv2d_shape_init(kilnet_conv2d_shape* s, int64_t N, int64_t H, int64_t W,
                                        int64_t C, int64_t K, int64_t R, int64_t S,
                                        int64_t stride_h, int64_t stride_w, int64_t dilation_h,
                                        int64_t dilation_w, int padding);

/* y = conv2d(x, w) + b. y must not overlap x, w or b. */
KILNET_API int kilnet_conv2d_forward(const kilnet_conv2d_shape* s, const float* x, const float* w,
                                     const float* b, float* y);

/* Gradients of y = conv2d(x, w) + b given dy (N x P x Q x K):
 *   dx (N x H x W x C) overwritten, or NULL to skip;  dw (R x S x C x K) +=;  db (K) += or NULL.
 * No output may overlap another argument. */
KILNET_API int kilnet_conv2d_backward(const kilnet_conv2d_shape* s, const float* dy, const float* x,
                                      const float* w, float* dx, float* dw, float* db);

/* The same two with an elementwise activation fused in, act a KILNET_ACT_* other than SOFTMAX
 * (enum kilnet_activation below): forward y = act(conv2d(x, w) + b), applied as y is stored;
 * backward takes the forward OUTPUT y (N x P x Q x K; may be NULL for KILNET_ACT_LINEAR) and
 * uses dz = act'(y) * dy on the fly, as if dy had first been passed through
 * kilnet_activation_backward. With KILNET_ACT_LINEAR they are kilnet_conv2d_forward/backward.
 * No output may overlap another argument, y included. */
KILNET_API int kilnet_conv2d_forward_act(const kilnet_conv2d_shape* s, const float* x, const float* w,
                                         const float* b, int act, float* y);
KILNET_API int kilnet_conv2d_backward_act(const kilnet_conv2d_shape* s, const float* dy, const float* x,
                                          const float* w, int act, const float* y, float* dx, float* dw,
                                          float* db);

/* ---------------------------------------------------------------- c_api_activation -------- */

/* Values of kilnet::Act. Softmax is not elementwise: use kilnet_softmax_*. */
enum kilnet_activation {
  KILNET_ACT_LINEAR = 0,
  KILNET_ACT_RELU = 1,
  KILNET_ACT_SIGMOID = 2,
  KILNET_ACT_TANH = 3,
  KILNET_ACT_SOFTMAX = 4
};

/* y[n] = act(x[n]). y may be x itself (in place) but must not partly overlap it. */
KILNET_API int kilnet_activation_forward(int act, int64_t n, const float* x, float* y);

/* dx[n] = act'(.) * dy[n], from the forward OUTPUT y[n]. dx may be dy itself; dx must not
 * overlap y. */
KILNET_API int kilnet_activation_backward(int act, int64_t n, const float* y, const float* dy,
                                          float* dx);

/* Softmax along each row of x[rows, cols] (max subtracted: stable). y may be x itself. */
KILNET_API int kilnet_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y);

/* dx[rows, cols] from the softmax output y and dy. dx may be dy itself; not y. */
KILNET_API int kilnet_softmax_backward(int64_t rows, int64_t cols, const float* y, const float* dy,
                                       float* dx);

/* ---------------------------------------------------------------- c_api_loss -------------- */

/* Keras losses on pred[rows, cols] (cols = the last axis). Each writes the mean loss to *loss
 * (may be NULL) and, when grad is not NULL, grad[rows, cols] = d(loss)/d(pred), overwritten,
 * already divided by the batch. grad must not overlap an input. mse/mae/binary average over
 * rows and cols, the cross-entropies over rows. Probabilities are clipped to [1e-7, 1 - 1e-7]. */
KILNET_API int kilnet_mse(int64_t rows, int64_t cols, const float* pred, const float* target,
                          float* grad, double* loss);
KILNET_API int kilnet_mae(int64_t rows, int64_t cols, const float* pred, const float* target,
                          float* grad, double* loss);
/* target in [0, 1]; pred a probability, or a logit when from_logits != 0 (exact, stable). */
KILNET_API int kilnet_binary_crossentropy(int64_t rows, int64_t cols, const float* pred,
                                          const float* target, int from_logits, float* grad,
                                          double* loss);
/* target one-hot (or soft) rows; pred probabilities (renormalized per row, as Keras does). */
KILNET_API int kilnet_categorical_crossentropy(int64_t rows, int64_t cols, const float* pred,
                                               const float* target, float* grad, double* loss);
/* labels[rows] integers in [0, cols); pred probabilities. */
KILNET_API int kilnet_sparse_categorical_crossentropy(int64_t rows, int64_t cols, const float* pred,
                                                      const int64_t* labels, float* grad,
                                                      double* loss);
/* Fused softmax + cross-entropy on logits[rows, cols]: exactly one of labels[rows] (integers in
 * [0, cols)) and target[rows, cols] (one-hot or soft) is non-NULL. probs[rows, cols] (may be
 * NULL) receives the softmax; grad = (probs - onehot) / rows. Stable for logits of any size. */
KILNET_API int kilnet_softmax_crossentropy(int64_t rows, int64_t cols, const float* logits,
                                           const int64_t* labels, const float* target,
                                           float* probs, float* grad, double* loss);

/* ---------------------------------------------------------------- c_api_optim ------------- */

/* One optimizer step over n parameters in one flat buffer (Keras's formulas). No two buffers
 * may overlap. SGD: velocity[n] is needed when momentum != 0 (NULL allowed when it is 0):
 *   v = momentum*v - lr*g;  p += v   (nesterov != 0: p += momentum*v - lr*g). */
KILNET_API int kilnet_sgd_update(int64_t n, float* param, const float* grad, float* velocity,
                                 float lr, float momentum, int nesterov);

/* Adam, step t counted from 1 (Keras defaults: beta1 0.9, beta2 0.999, eps 1e-7):
 *   m += (g - m)(1 - beta1);  v += (g^2 - v)(1 - beta2);
 *   p -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps).  m[n], v[n] start at 0. */
KILNET_API int kilnet_adam_update(int64_t n, float* param, const float* grad, float* m, float* v,
                                  float lr, float beta1, float beta2, float eps, int64_t step);

/* ---------------------------------------------------------------- c_api_random ------------ */

/* out[n] = scale * standard normal values (add != 0: out += them), value j from Philox4x32-10 of
 * the key and the counter (counter + 16 * (j / 32) + j % 16) through Box-Muller (kilnet/random.h
 * defines the stream): the same values at any thread count and SIMD level. Uses the counters
 * counter .. counter + 16 * ceil(n / 32) - 1: later calls with the same key start past them. */
KILNET_API int kilnet_normal_fill(int64_t n, uint64_t key, uint64_t counter, float scale, int add,
                                  float* out);
/* Philox4x32-10 (Salmon et al. 2011) of one 128-bit counter (four words) and key (two). */
KILNET_API int kilnet_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KILNET_C_API_H */
