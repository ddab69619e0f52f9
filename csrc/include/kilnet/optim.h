// optim.h — optimizer updates over one flat parameter buffer.
// kilnet keeps every trainable parameter of a model in one contiguous float32 buffer (the
// layers hold views into it), and the gradients in another, so one call updates all of them.
//   n elements; param, grad, and the state buffers are all n long.
// Formulas are Keras's (keras/optimizers/sgd.py, adam.py):
//   SGD:  v = momentum*v - lr*g;  p += v               (nesterov: p += momentum*v - lr*g)
//         momentum == 0: p -= lr*g and velocity may be nullptr
//   Adam: m += (g-m)(1-b1);  v += (g²-v)(1-b2);
//         p -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)       t = step, counted from 1
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

}  // namespace kilnet::cpu
