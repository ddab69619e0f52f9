// optim.h — optimizer updates over one flat parameter buffer.
// kilnet keeps every trainable parameter of a model in one contiguous float32 buffer (the
// layers hold views into it), and the gradients in another, so one call updates all of them.
//   n elements; param, grad, and the state buffers are all n long.
// Formulas are Keras's (keras/optimizers/sgd.py, adam.py):
//   SGD:  v = momentum*v - lr*g;  p += v               (nesterov: p += momentum*v - lr*g)
//         momentum == 0: p -= lr*g and velocity may be nullptr
//   Adam: m += (g-m)(1-b1);  v += (g²-v)(1-b2);
//         p -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)       t = step, counted from 1
// Added with issue 8 (keras/optimizers/rmsprop.py, adagrad.py, adamw.py, base_optimizer.py):
//   weight decay (Keras 3's decoupled form, wd = weight_decay, 0 for none), before the step:
//         p -= p*wd*lr
//   RMSprop: v = rho*v + (1-rho)g²;  den = v + eps   (centered: a = rho*a + (1-rho)g;
//         den = v - a² + eps);  inc = lr*g/sqrt(den);  momentum > 0: mom = momentum*mom + inc,
//         p -= mom;  else p -= inc.   avg (centered) and mom (momentum) may be nullptr.
//   Adagrad: acc += g²;  p -= lr*g/sqrt(acc + eps)     (acc starts at initial_accumulator_value)
//   AdamW:   the weight decay, then the Adam step above.
//   Gradient clipping (before the step, on the gradient buffer in place):
//     clip_by_value: g = clamp(g, -clipvalue, clipvalue)
//     clip_by_norm:  per segment k (elements offsets[k] .. offsets[k+1]-1, nseg segments,
//                    offsets has nseg+1 entries): g *= clipnorm / max(||g_k||, clipnorm).
//                    Keras's clipnorm is one segment per variable; global_clipnorm is one
//                    segment over the whole buffer.
//   Regularization: l1l2_penalty returns l1*sum|w| + l2*sum w² (in double) and, when dw is not
//     nullptr, adds its gradient l1*sign(w) + 2*l2*w to dw (Keras's L1/L2/L1L2, no 1/2).
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu {

void sgd_update(index_t n, float* param, const float* grad, float* velocity, float lr,
                float momentum, bool nesterov);
void adam_update(index_t n, float* param, const float* grad, float* m, float* v, float lr,
                 float beta1, float beta2, float eps, index_t step);
void sgd_update_ref(index_t n, float* param, const float* grad, float* velocity, float lr,
                    float momentum, bool nesterov);
void adam_update_ref(index_t n, float* param, const float* grad, float* m, float* v, float lr,
                     float beta1, float beta2, float eps, index_t step);

void rmsprop_update(index_t n, float* param, const float* grad, float* velocity, float* avg_grad,
                    float* mom, float lr, float rho, float momentum, float eps, float weight_decay);
void adagrad_update(index_t n, float* param, const float* grad, float* accumulator, float lr,
                    float eps, float weight_decay);
void adamw_update(index_t n, float* param, const float* grad, float* m, float* v, float lr,
                  float beta1, float beta2, float eps, float weight_decay, index_t step);
void clip_by_value(index_t n, float* grad, float clipvalue);
void clip_by_norm(index_t nseg, const index_t* offsets, float* grad, float clipnorm);
double l1l2_penalty(index_t n, const float* w, float l1, float l2, float* dw);

void rmsprop_update_ref(index_t n, float* param, const float* grad, float* velocity,
                        float* avg_grad, float* mom, float lr, float rho, float momentum,
                        float eps, float weight_decay);
void adagrad_update_ref(index_t n, float* param, const float* grad, float* accumulator, float lr,
                        float eps, float weight_decay);
void adamw_update_ref(index_t n, float* param, const float* grad, float* m, float* v, float lr,
                      float beta1, float beta2, float eps, float weight_decay, index_t step);
void clip_by_value_ref(index_t n, float* grad, float clipvalue);
void clip_by_norm_ref(index_t nseg, const index_t* offsets, float* grad, float clipnorm);
double l1l2_penalty_ref(index_t n, const float* w, float l1, float l2, float* dw);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same updates on device pointers (one fused launch each over the whole flat buffer, float4
// when aligned), run on `stream` (a CUDA stream handle). clip_by_norm's offsets stay a HOST array (small
// metadata, copied to stream-ordered scratch). l1l2_penalty has one more argument, out (a device
// float or nullptr): with out the value is written there without synchronizing and 0 is
// returned; without it the function waits for the stream and returns the value.
void sgd_update(index_t n, float* param, const float* grad, float* velocity, float lr,
                float momentum, bool nesterov, void* stream);
void adam_update(index_t n, float* param, const float* grad, float* m, float* v, float lr,
                 float beta1, float beta2, float eps, index_t step, void* stream);
void rmsprop_update(index_t n, float* param, const float* grad, float* velocity, float* avg_grad,
                    float* mom, float lr, float rho, float momentum, float eps, float weight_decay,
                    void* stream);
void adagrad_update(index_t n, float* param, const float* grad, float* accumulator, float lr,
                    float eps, float weight_decay, void* stream);
void adamw_update(index_t n, float* param, const float* grad, float* m, float* v, float lr,
                  float beta1, float beta2, float eps, float weight_decay, index_t step, void* stream);
void clip_by_value(index_t n, float* grad, float clipvalue, void* stream);
void clip_by_norm(index_t nseg, const index_t* offsets, float* grad, float clipnorm, void* stream);
double l1l2_penalty(index_t n, const float* w, float l1, float l2, float* dw, float* out, void* stream);

}  // namespace kilnet::cuda
