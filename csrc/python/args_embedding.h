// args_embedding.h — the argument checks of embedding_forward / embedding_backward, shared by
// kilnet._cpu (bind_embedding.cpp) and kilnet._cuda (cuda_bind_embedding.cpp). On the host the
// ids are also checked for range here, before the GIL is released; on the GPU the kernel checks
// them (kilnet/embedding.h).
#pragma once
#include <string>
#include "checks.h"

namespace kilnet::bind {

struct EmbeddingArgs {
  index_t N = 0, V = 0, D = 0;   // ids, vocabulary rows, width
  Arr ids, w, rows;              // rows: out (forward) or dy (backward), shape ids.shape + (D,)
};

// Every id in [0, V), else a ValueError naming the first bad id, where it is and V.
template <class I>
inline void ids_in_range(const char* fn, const I* ids, index_t N, index_t V) {
  for (index_t i = 0; i < N; ++i)
    if (ids[i] < 0 || index_t(ids[i]) >= V)
      fail_value(std::string(fn) + ": id " + std::to_string(ids[i]) + " (at flat index " + std::to_string(i) +
                 " of the ids) is out of range for a vocabulary of input_dim=" + std::to_string(V) +
                 " rows: ids must be in [0, " + std::to_string(V) + ")");
}

// rows_name: "out" or "dy"; w_name: "W" or "dW".
inline EmbeddingArgs embedding_args(const Arrays& A, const char* fn, const py::object& ids_, const py::object& w_,
                                    const char* w_name, bool w_out, const py::object& rows_,
                                    const char* rows_name, bool rows_out) {
  EmbeddingArgs a;
  a.ids = A.in_ids(fn, "ids", ids_, -1);
  a.w = w_out ? A.out_f32(fn, w_name, w_, 2) : A.in_f32(fn, w_name, w_, 2);
  a.rows = rows_out ? A.out_f32(fn, rows_name, rows_, -1) : A.in_f32(fn, rows_name, rows_, -1);
  a.N = a.ids.size;
  a.V = a.w.dim(0);
  a.D = a.w.dim(1);
  if (a.V < 1 || a.D < 1)
    fail_value(std::string(fn) + ": '" + w_name + "' must have at least one row and one column, got shape " +
               shape_str(a.w.shape));
  std::vector<index_t> want = a.ids.shape;
  want.push_back(a.D);
  expect_shape(fn, rows_name, a.rows, want);
  if (A.host) {
    if (a.ids.elem_bytes == 4) ids_in_range(fn, a.ids.i32(), a.N, a.V);
    else ids_in_range(fn, a.ids.i64(), a.N, a.V);
  }
  const Arr* out = rows_out ? &a.rows : &a.w;
  const Arr* in = rows_out ? &a.w : &a.rows;
  outputs_apart(fn, {{rows_out ? rows_name : w_name, out}}, {{"ids", &a.ids}, {rows_out ? w_name : rows_name, in}});
  return a;
}

inline EmbeddingArgs embedding_forward_args(const Arrays& A, const py::object& ids_, const py::object& w_,
                                            const py::object& out_) {
  return embedding_args(A, "embedding_forward", ids_, w_, "W", false, out_, "out", true);
}

inline EmbeddingArgs embedding_backward_args(const Arrays& A, const py::object& ids_, const py::object& dy_,
                                             const py::object& dw_) {
  return embedding_args(A, "embedding_backward", ids_, dw_, "dW", true, dy_, "dy", false);
}

}  // namespace kilnet::bind
