// The one-warp-per-query-row kernels' shared parts (forwards, and the backwards' dq kernels): rows of
// q / dout / out in registers (each lane holds head-dim elements lane, lane + 32, ...: kSlots of
// them), the block's key loop over K/V tiles staged in shared memory, and the output row store with
// the non-finite policy of CONTRACTS §2.
#pragma once

#include "common/online_softmax.h"
#include "cuda/device_common.cuh"

namespace fastattn::cuda {

// x[s] = mult * row[s * 32 + lane] (0 past `n`): a q / dout / out / k / v row in registers, fp32.
template <typename T, int kSlots>
__device__ __forceinline__ void load_row(float (&x)[kSlots], const T* row, int64_t n, float mult, int lane) {
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int c = s * 32 + lane;
    x[s] = c < n ? to_f(row[c]) * mult : 0.0f;
  }
}

template <int kSlots>
__device__ __forceinline__ void zero_row(float (&x)[kSlots]) {
#pragma unroll
  for (int s = 0; s < kSlots; ++s) x[s] = 0.0f;
}

// row[c] = mult * x[s] for c = s * 32 + lane < n: a gradient row from registers.
template <typename T, int kSlots>
__device__ __forceinline__ void save_row(T* row, const float (&x)[kSlots], float mult, int64_t n, int lane) {
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int c = s * 32 + lane;
    if (c < n) row[c] = from_f<T>(x[s] * mult);
  }
}

// x . y over the head dim, x in registers, y a staged fp32 row; every lane gets the same bits.
template <int kSlots>
__device__ __forceinline__ float row_dot(const float (&x)[kSlots], const float* y, int lane) {
  float dot = 0.0f;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) dot += x[s] * y[s * 32 + lane];
  return warp_sum(dot);
}

template <int kSlots>
__device__ __forceinline__ float row_dot(const float (&x)[kSlots], const float (&y)[kSlots]) {
  float dot = 0.0f;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) dot += x[s] * y[s];
  return warp_sum(dot);
}

// x[s] += w * y[s * 32 + lane]
template <int kSlots>
__device__ __forceinline__ void axpy_row(float (&x)[kSlots], float w, const float* y, int lane) {
#pragma unroll
  for (int s = 0; s < kSlots; ++s) x[s] += w * y[s * 32 + lane];
}

// CONTRACTS §2 in a kernel: each lane ORs the non-finiteness of what it reads into `bad` (scores,
// which carry q's and k's, and the v entries of the row's support); the warp decides at the end.
__device__ __forceinline__ void note_finite(bool& bad, float x) { bad |= !isfinite(x); }

template <int kSlots>
__device__ __forceinline__ void note_finite_row(bool& bad, const float* y, int lane) {
#pragma unroll
  for (int s = 0; s < kSlots; ++s) note_finite(bad, y[s * 32 + lane]);
}

// Stores one output row: zeros when the row has no allowed key, all-NaN when it read a non-finite
// value, else acc * mult. Returns which, for the row statistics. All lanes of the warp call it.
enum RowState : int { kRowEmpty = 0, kRowNaN = 1, kRowOk = 2 };
template <typename T, int kSlots>
__device__ __forceinline__ RowState store_row(T* out, const float (&acc)[kSlots], float mult, int64_t Dv,
                                              bool any_key, bool bad, int lane) {
  const bool nan_row = __any_sync(kFullMask, bad);
  const RowState st = !any_key ? kRowEmpty : (nan_row ? kRowNaN : kRowOk);
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int c = s * 32 + lane;
    if (c < Dv) out[c] = from_f<T>(st == kRowOk ? acc[s] * mult : (st == kRowNaN ? NAN : 0.0f));
  }
  return st;
}

// Stages rows j0 .. j0 + kRows of a (rows, width) matrix into shared memory as fp32 times `mult`
// (zeros past `end` or `width`); every thread of the block takes part.
template <typename T, int kRows, int kCols>
__device__ __forceinline__ void stage_rows(float (*dst)[kCols], const T* src, int64_t j0, int64_t end, int64_t width,
                                           float mult = 1.0f) {
  for (int e = threadIdx.x; e < kRows * kCols; e += blockDim.x) {
    const int r = e / kCols, c = e % kCols;
    const int64_t j = j0 + r;
    dst[r][c] = (j < end && c < width) ? to_f(src[j * width + c]) * mult : 0.0f;
  }
}

// The query row of this warp in a grid of (sequence, head, tile of kRows rows) blocks.
struct WarpRow {
  Seq sq;
  int64_t h, hk;
  int64_t i;     // local query row
  bool ok;       // i < sq.nq (warps past the end only help the block stage tiles)
  int64_t row;   // flat index of the row in q / out / statistics (of row 0 when !ok)
  int64_t last;  // last local row of the block's tile
};

// body(WarpRow) for each tile of rows this block owns (every thread of the block calls it).
template <int kRows, typename Body>
__device__ __forceinline__ void for_each_warp_row(const Shape& d, const Ragged& r, int64_t n_tiles, Body&& body) {
  const int warp = threadIdx.x >> 5;
  const GridTask task = grid_task(d.Hq, n_tiles);
  const Seq sq = seq_at(d, r, task.s);
  const int64_t hk = task.h / (d.Hq / d.Hk);
  for (int64_t tile = task.tile; tile * kRows < sq.nq; tile += task.n_tiles) {
    const int64_t i = tile * kRows + warp;
    const bool ok = i < sq.nq;
    body(WarpRow{sq, task.h, hk, i, ok, q_index(d, sq, task.h, ok ? i : 0), imin(tile * kRows + kRows, sq.nq) - 1});
  }
}

// Shared memory of the one-warp-per-row kernels: a tile of kTileN keys' k and v rows (fp32), and
// whether each key exists (padding masks).
template <int kSlots, int kTileN>
struct KVTile {
  float k[kTileN][kSlots * 32];
  float v[kTileN][kSlots * 32];
  bool ok[kTileN];
};

// Keys per staged tile: 2 * kTileN * kSlots * 32 floats stay within 48 KB of static shared memory.
template <int kSlots>
__host__ __device__ constexpr int tile_keys() { return kSlots >= 8 ? 16 : 32; }

// The key loop of the one-warp-per-row kernels: the block stages keys kbegin .. kend (the union of
// its rows' keys) tile by tile, skipping tiles with no existing key, and each warp with a row
// (row_ok) calls visit(j, k_j, v_j) for its existing keys j < row_end, in increasing order
// (warp-uniform calls). Every thread of the block calls it, with the same kbegin / kend.
template <typename T, int kSlots, int kTileN, typename Visit>
__device__ __forceinline__ void for_each_key(KVTile<kSlots, kTileN>& sm, const T* k, const T* v, const Shape& d,
                                             const Ragged& r, const Seq& sq, int64_t kbegin, int64_t kend,
                                             bool row_ok, int64_t row_end, Visit&& visit) {
  static_assert(kTileN <= 128, "one thread per key of a tile (blocks of at least 4 warps)");
  for (int64_t j0 = kbegin; j0 < kend; j0 += kTileN) {
    const int64_t j = j0 + threadIdx.x;
    const bool exists = threadIdx.x < kTileN && j < kend && key_exists(d, r, sq, j);
    if (!__syncthreads_or(exists)) continue;  // padding only; the barrier also ends the last tile's reads
    if (threadIdx.x < kTileN) sm.ok[threadIdx.x] = exists;
    stage_rows<T, kTileN, kSlots * 32>(sm.k, k, j0, kend, d.D);
    stage_rows<T, kTileN, kSlots * 32>(sm.v, v, j0, kend, d.Dv);
    __syncthreads();
    if (!row_ok) continue;
    const int64_t n = imin(kTileN, row_end - j0);
    for (int64_t t = 0; t < n; ++t) {
      if (sm.ok[t]) visit(j0 + t, sm.k[t], sm.v[t]);
    }
  }
}

// for_each_key over the keys of a warp row: all, or under causality those with j <= i' (the block
// stages the keys of its last row).
template <typename T, int kSlots, int kTileN, typename Visit>
__device__ __forceinline__ void for_each_row_key(KVTile<kSlots, kTileN>& sm, const void* k, const void* v,
                                                 const Shape& d, const Ragged& r, const WarpRow& w, bool causal,
                                                 Visit&& visit) {
  const int64_t kv0 = kv_index(d, w.sq, w.hk, 0);
  for_each_key<T, kSlots, kTileN>(sm, static_cast<const T*>(k) + kv0 * d.D, static_cast<const T*>(v) + kv0 * d.Dv, d,
                                  r, w.sq, 0, causal_limit(w.sq, causal, w.last), w.ok, causal_limit(w.sq, causal, w.i),
                                  visit);
}

// A row's streaming softmax: acc = sum_j e^(s_j - max) v_j with the running (max, sum), and what
// CONTRACTS §2 needs (whether the row saw a key, whether it read a non-finite score or v entry).
template <int kSlots>
struct SoftmaxRow {
  OnlineSoftmax st;
  float acc[kSlots];
  bool any = false, bad = false;

  __device__ __forceinline__ SoftmaxRow() { zero_row<kSlots>(acc); }
  __device__ __forceinline__ void add(float score, const float* vr, int lane) {
    any = true;
    note_finite(bad, score);
    note_finite_row<kSlots>(bad, vr, lane);
    const OnlineSoftmax::Step step = st.push(score);
#pragma unroll
    for (int s = 0; s < kSlots; ++s) acc[s] = acc[s] * step.rescale + step.weight * vr[s * 32 + lane];
  }
  // out = gate * acc / sum (zeros with no key, all-NaN on NaN rows), lse (+inf / NaN likewise).
  template <typename T>
  __device__ __forceinline__ void store(T* out, float* lse, int64_t Dv, float gate, int lane) const {
    const float mult = st.sum > 0.0f ? gate / st.sum : 0.0f;
    const RowState rs = store_row<T, kSlots>(out, acc, mult, Dv, any, bad, lane);
    if (lane == 0) *lse = rs == kRowOk ? st.lse() : (rs == kRowNaN ? NAN : INFINITY);
  }
};

template <typename T>
__device__ __forceinline__ const T* row_ptr(const void* base, int64_t row, int64_t width) {
  return static_cast<const T*>(base) + row * width;
}

// What a dq kernel's row starts from: scale * q_i and dout_i in registers, delta_i = dout_i . out_i
// (the softmax gradient's row term), and dq_i's accumulator.
template <typename T, int kSlots>
struct GradRow {
  float q[kSlots], dout[kSlots], dq[kSlots];
  float delta;
  __device__ __forceinline__ GradRow(const void* q_, const void* dout_, const void* out_, const Shape& d,
                                     const int64_t row, bool ok, float scale, int lane) {
    load_row<T, kSlots>(q, row_ptr<T>(q_, row, d.D), ok ? d.D : 0, scale, lane);
    load_row<T, kSlots>(dout, row_ptr<T>(dout_, row, d.Dv), ok ? d.Dv : 0, 1.0f, lane);
    load_row<T, kSlots>(dq, row_ptr<T>(out_, row, d.Dv), ok ? d.Dv : 0, 1.0f, lane);  // out, for delta
    delta = row_dot<kSlots>(dout, dq);
    zero_row<kSlots>(dq);
  }
};

}  // namespace fastattn::cuda
