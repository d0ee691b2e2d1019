// The adaptive-span skipping plan on the device (contract: fastattn/ops/adaptive_span_attention.py):
// per (plan sequence, head) the active query rows (gate g > 0) compacted in increasing order, so
// gated-off queries cost nothing, and per head the reach beyond which the ramp is 0; plus the walk
// of the one-warp-per-row kernels over the active rows.
#pragma once

#include "common/selection.h"
#include "cuda/adaptive_span_attention.cuh"
#include "cuda/warp_rows.cuh"

namespace fastattn::cuda {

constexpr int kPlanThreads = 256;

// The gate depends on local positions only: a dense batch has one plan for all its elements.
inline int64_t plan_sequences(const Ragged& r) { return r.cu_seqlens_q != nullptr ? r.num_seqs : 1; }

// A head's ramp in one sequence: m(x) = clamp((A - x) / R, 0, 1) is 0 beyond x = reach.
struct SpanHead {
  float A, R;
  int64_t reach;
  __device__ __forceinline__ float m(int64_t x) const { return span_ramp(A, R, x < 0 ? -x : x); }
};
__device__ __forceinline__ SpanHead span_head(const float* span, float ramp, int64_t h, const Seq& sq) {
  const float A = ramp + span[h];
  return SpanHead{A, ramp, span_reach(A, sq.nq + sq.nk + 1)};
}

// Block (plan sequence ps, head h) of a plan_sequences * Hq grid writes that part of the plan.
__global__ void __launch_bounds__(kPlanThreads) span_plan_kernel(Shape d, Ragged r, const float* period,
                                                                 const float* phase, float duty, SpanPlan plan) {
  __shared__ int32_t warp_count[kPlanThreads / 32];
  __shared__ int32_t base;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t ps = blockIdx.x / d.Hq, h = blockIdx.x % d.Hq;
  const Seq sq = seq_at(d, r, ps);
  int32_t* idx = plan.idx + h * d.Nq + sq.q0;
  if (threadIdx.x == 0) base = 0;
  for (int64_t c0 = 0; c0 < sq.nq; c0 += kPlanThreads) {
    const int64_t i = c0 + threadIdx.x;
    const bool active = i < sq.nq && span_gate(i + sq.offset(), phase[h], period[h], duty).g > 0.0f;
    const unsigned ballot = __ballot_sync(kFullMask, active);
    __syncthreads();  // the previous chunk's readers of warp_count and base are done
    if (lane == 0) warp_count[warp] = __popc(ballot);
    __syncthreads();
    int32_t before = base + __popc(ballot & ((1u << lane) - 1u));
    for (int w = 0; w < warp; ++w) before += warp_count[w];
    if (active) idx[before] = static_cast<int32_t>(i);
    __syncthreads();  // every thread has read base
    if (threadIdx.x == 0) {
      for (int w = 0; w < kPlanThreads / 32; ++w) base += warp_count[w];
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) plan.cnt[ps * d.Hq + h] = base;
}

// Host: the plan of a gated call (nothing to do without a gate).
inline cudaError_t launch_span_plan(const Shape& d, const Ragged& r, const float* period, const float* phase,
                                    float duty, const SpanPlan& plan, cudaStream_t stream) {
  if (period == nullptr) return cudaSuccess;
  const int64_t blocks = plan_sequences(r) * d.Hq;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  span_plan_kernel<<<static_cast<unsigned>(blocks), kPlanThreads, 0, stream>>>(d, r, period, phase, duty, plan);
  return cudaGetLastError();
}

// The active row of this warp in a grid of (sequence, head, tile of kRows compacted rows) blocks.
struct ActiveRow {
  Seq sq;
  int64_t h, hk;
  int64_t i;                  // local query row
  bool ok;                    // the warp has a row (else it only helps the block stage tiles)
  int64_t row;                // flat index of the row (of row 0 when !ok)
  float g;                    // its gate (1 without one)
  int64_t ip_first, ip_last;  // i' of the block's first and last rows
};

template <int kRows, typename Params, typename Body>
__device__ __forceinline__ void for_each_active_row(const Params& p, int64_t n_tiles, Body&& body) {
  const Shape& d = p.d;
  const int warp = threadIdx.x >> 5;
  const GridTask task = grid_task(d.Hq, n_tiles);
  const Seq sq = seq_at(d, p.r, task.s);
  const int64_t h = task.h, hk = h / (d.Hq / d.Hk);
  const bool gated = p.period != nullptr;
  const int32_t* idx = gated ? p.plan.idx + h * d.Nq + sq.q0 : nullptr;
  const int64_t active = gated ? p.plan.cnt[(p.r.cu_seqlens_q ? task.s : 0) * d.Hq + h] : sq.nq;
  auto row_of = [&](int64_t c) -> int64_t { return gated ? idx[c] : c; };
  for (int64_t tile = task.tile; tile * kRows < active; tile += task.n_tiles) {
    const int64_t c = tile * kRows + warp;
    const bool ok = c < active;
    const int64_t i = ok ? row_of(c) : 0;
    const float g = gated && ok ? span_gate(i + sq.offset(), p.phase[h], p.period[h], p.duty).g : 1.0f;
    body(ActiveRow{sq, h, hk, i, ok, q_index(d, sq, h, i), g, row_of(tile * kRows) + sq.offset(),
                   row_of(imin(tile * kRows + kRows, active) - 1) + sq.offset()});
  }
}

// for_each_key over the keys within the span of an active row: visit(j, m, k_j, v_j) for its keys
// with m > 0. The block stages the keys within reach of its first .. last row.
template <typename T, int kSlots, int kTileN, typename Params, typename Visit>
__device__ __forceinline__ void for_each_span_key(KVTile<kSlots, kTileN>& sm, const Params& p, const ActiveRow& w,
                                                  const SpanHead& sh, Visit&& visit) {
  const Shape& d = p.d;
  const int64_t kv0 = kv_index(d, w.sq, w.hk, 0), ip = w.i + w.sq.offset();
  const int64_t lo = iclamp(w.ip_first - sh.reach, 0, w.sq.nk);
  const int64_t hi = imin(p.causal ? w.ip_last + 1 : w.ip_last + sh.reach + 1, w.sq.nk);
  const int64_t row_end = imin(p.causal ? ip + 1 : ip + sh.reach + 1, w.sq.nk);
  for_each_key<T, kSlots, kTileN>(sm, row_ptr<T>(p.k, kv0, d.D), row_ptr<T>(p.v, kv0, d.Dv), d, p.r, w.sq, lo, hi,
                                  w.ok, row_end, [&](int64_t j, const float* kr, const float* vr) {
    const float m = sh.m(ip - j);
    if (m > 0.0f) visit(j, m, kr, vr);  // warp-uniform
  });
}

}  // namespace fastattn::cuda
