// rnn_layout.h — where each block of the recurrent workspace `ws` and the backward `scratch`
// lives (kilnet/rnn.h describes the blocks). Header-only and inline so that the CPU kernels
// (rnn.cpp), the CUDA kernels (rnn.cu) and both bindings agree on one layout without the CUDA
// library having to link the CPU one. Not part of the public API.
#pragma once
#include "kilnet/rnn.h"

namespace kilnet::detail {

inline index_t rnn_gate_count(Cell cell) {
  switch (cell) {
    case Cell::LSTM: return 4;
    case Cell::GRU: return 3;
    default: return 1;
  }
}

inline index_t rnn_up16(index_t n) { return (n + 15) / 16 * 16; }

// Offsets (in floats) of the blocks of ws and scratch; -1 for blocks a cell does not have.
struct RnnLayout {
  index_t xs = 0, hs = 0, gates = -1, cs = -1, tcs = -1, huh = -1, ws_total = 0;
  index_t dz = 0, dhu = -1, dxs = 0, carry = 0, pass = 0, scratch_total = 0;
};

inline RnnLayout rnn_layout(const RnnShape& s) {
  const index_t GH = rnn_gate_count(s.cell) * s.H, TB = s.T * s.B, state = (s.T + 1) * s.B * s.H;
  RnnLayout L;
  index_t o = 0;
  L.xs = o; o += rnn_up16(TB * s.I);
  L.hs = o; o += rnn_up16(state);
  if (s.cell == Cell::LSTM) {
    L.gates = o; o += rnn_up16(TB * GH); L.cs = o; o += rnn_up16(state); L.tcs = o; o += rnn_up16(TB * s.H);
  }
  if (s.cell == Cell::GRU) { L.gates = o; o += rnn_up16(TB * GH); L.huh = o; o += rnn_up16(TB * s.H); }
  L.ws_total = o;
  o = 0;
  L.dz = o; o += rnn_up16(TB * GH);
  if (s.cell == Cell::GRU) { L.dhu = o; o += rnn_up16(TB * GH); }
  L.dxs = o; o += rnn_up16(TB * s.I);
  L.carry = o; o += rnn_up16(s.B * s.H);
  L.pass = o; o += rnn_up16(s.B * s.H);   // gradient wrt h that skipped masked steps (and dh_last)
  L.scratch_total = o;
  return L;
}

}  // namespace kilnet::detail
