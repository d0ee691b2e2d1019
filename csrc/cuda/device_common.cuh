// What every torch-free CUDA kernel shares:
//   device: dtype conversion to/from fp32, int64 min/max, warp reductions; the ragged-batch view of
//           CONTRACTS §1 (sequences, allowed keys) and the (sequence, head, tile) grid;
//   host:   the dtype and head-dim-slot dispatch of the launchers, grid sizing.
// Layout: cuda/problem.h. Each lane of a warp owns head-dim elements lane, lane + 32, ... of a row
// (kSlots of them, kSlots * 32 >= max(D, Dv)).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/selection.h"
#include "cuda/problem.h"

namespace fastattn::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
__device__ __forceinline__ int64_t iclamp(int64_t x, int64_t lo, int64_t hi) { return imin(imax(x, lo), hi); }

// Butterfly sum: every lane ends with the same bits.
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}
__device__ __forceinline__ double warp_sum(double x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// ---- ragged batches (CONTRACTS §1) -------------------------------------------------------------

// One independent problem: tensor batch b, its query rows q0 .. q0 + nq and key rows k0 .. k0 + nk.
// Positions are local: query i (0 <= i < nq) sits at i' = i + offset(), key j at j.
struct Seq {
  int64_t b, q0, nq, k0, nk;
  __device__ __forceinline__ int64_t offset() const { return nk - nq; }
};

__device__ __forceinline__ Seq seq_at(const Shape& d, const Ragged& r, int64_t s) {
  if (r.cu_seqlens_q == nullptr) return Seq{s, 0, d.Nq, 0, d.Nk};
  const int64_t q0 = r.cu_seqlens_q[s], k0 = r.cu_seqlens_k[s];
  return Seq{0, q0, r.cu_seqlens_q[s + 1] - q0, k0, r.cu_seqlens_k[s + 1] - k0};
}

// Flat index of query row i of head h (rows of q, out, and the (B, Hq, Nq) statistics).
__device__ __forceinline__ int64_t q_index(const Shape& d, const Seq& sq, int64_t h, int64_t i) {
  return (sq.b * d.Hq + h) * d.Nq + sq.q0 + i;
}
// Flat index of key row j of kv head hk (rows of k, v).
__device__ __forceinline__ int64_t kv_index(const Shape& d, const Seq& sq, int64_t hk, int64_t j) {
  return (sq.b * d.Hk + hk) * d.Nk + sq.k0 + j;
}
// Key j exists (not padding). Causal and the ops' own rules come on top.
__device__ __forceinline__ bool key_exists(const Shape& d, const Ragged& r, const Seq& sq, int64_t j) {
  return r.key_padding_mask == nullptr || r.key_padding_mask[sq.b * d.Nk + sq.k0 + j];
}
// Keys query row i may see before masks: j < causal_limit (bottom-right aligned when causal).
__device__ __forceinline__ int64_t causal_limit(const Seq& sq, bool causal, int64_t i) {
  return causal ? iclamp(i + sq.offset() + 1, 0, sq.nk) : sq.nk;
}

// A block's place in a grid of (sequence, head, tile) blocks, tiles fastest: tile `tile` of
// `n_tiles` per (sequence, head) (a kernel whose sequence has more tiles loops with stride n_tiles,
// so a too-small max_seqlen bound costs time, never rows).
struct GridTask {
  int64_t s, h, tile, n_tiles;
};
__device__ __forceinline__ GridTask grid_task(int64_t heads, int64_t n_tiles, int64_t blk = blockIdx.x) {
  const int64_t sh = blk / n_tiles;
  return GridTask{sh / heads, sh % heads, blk % n_tiles, n_tiles};
}

// ---- host ----------------------------------------------------------------------------------------

// f(T{}) with T the element type of the launchers' dtype code (0 float32, 1 float16, 2 bfloat16);
// any other code is cudaErrorInvalidValue.
template <typename F>
cudaError_t by_dtype(int dtype, F&& f) {
  switch (dtype) {
    case 0: return f(float{});
    case 1: return f(__half{});
    case 2: return f(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

// f(std::integral_constant<int, S>{}) with S the 32-lane slots per row covering max(D, Dv)
// (2, 4 or 8: head dims up to 64, 128, 256), the kernels' register-array size.
template <typename F>
void by_slots(int64_t D, int64_t Dv, F&& f) {
  const int64_t dmax = D > Dv ? D : Dv;
  if (dmax <= 64) f(std::integral_constant<int, 2>{});
  else if (dmax <= 128) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, 8>{});
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Argument checks every launcher does: head dims in [1, kMaxHeadDim], GQA heads, packed batches.
inline bool valid_shape(const Shape& d, const Ragged& r) {
  if (d.D < 1 || d.Dv < 1 || d.D > kMaxHeadDim || d.Dv > kMaxHeadDim) return false;
  if (d.Hk <= 0 || d.Hq % d.Hk != 0) return false;
  if ((r.cu_seqlens_q == nullptr) != (r.cu_seqlens_k == nullptr)) return false;
  if (r.cu_seqlens_q != nullptr) return d.B == 1 && r.key_padding_mask == nullptr && r.num_seqs >= 0;
  return r.num_seqs == d.B;
}

// A 1-D grid of (sequence, head, tile) blocks (gridDim.x < 2^31; y and z would cap at 65535).
struct Grid {
  int64_t tiles = 0, blocks = 0;  // tiles per (sequence, head); blocks = 0: nothing to launch
  unsigned dim() const { return static_cast<unsigned>(blocks); }
};

// The grid over `heads` heads with tiles of `per_tile` rows of a sequence-length bound (the tensor
// length `total` when dense or when no bound was given). Errors: invalid arguments, a grid too large.
inline cudaError_t plan_grid(const Shape& d, const Ragged& r, int64_t heads, int64_t bound, int64_t total,
                             int64_t per_tile, Grid& g) {
  if (!valid_shape(d, r)) return cudaErrorInvalidValue;
  const int64_t n = r.cu_seqlens_q != nullptr && bound > 0 ? (bound < total ? bound : total) : total;
  g.tiles = n > 0 ? ceil_div(n, per_tile) : 0;
  g.blocks = r.num_seqs * heads * g.tiles;
  return g.blocks <= 0x7fffffff ? cudaSuccess : cudaErrorInvalidConfiguration;
}
// ... over query rows (tiles of `rows` rows per (sequence, query head)),
inline cudaError_t plan_rows(const Shape& d, const Ragged& r, int64_t rows, Grid& g) {
  return plan_grid(d, r, d.Hq, r.max_seqlen_q, d.Nq, rows, g);
}
// ... and over keys (tiles of `keys` keys per (sequence, kv head)).
inline cudaError_t plan_keys(const Shape& d, const Ragged& r, int64_t keys, Grid& g) {
  return plan_grid(d, r, d.Hk, r.max_seqlen_k, d.Nk, keys, g);
}

// launch(T{}, std::integral_constant<int, kSlots>{}) -> cudaError_t for the call's dtype code and
// head dims (see by_dtype, by_slots); then the launch error, if any.
template <typename F>
cudaError_t launch_typed(int dtype, const Shape& d, F&& launch) {
  return by_dtype(dtype, [&](auto tag) {
    cudaError_t err = cudaSuccess;
    by_slots(d.D, d.Dv, [&](auto slots) { err = launch(tag, slots); });
    return err != cudaSuccess ? err : cudaGetLastError();
  });
}

// The launch of a grid over query rows (tiles of kRowsPerBlock rows per (sequence, head)):
// launch(T{}, slots, rows) -> cudaError_t, skipped when there are no rows.
template <int kRowsPerBlock, typename F>
cudaError_t launch_rows(int dtype, const Shape& d, const Ragged& r, F&& launch) {
  Grid rows;
  const cudaError_t err = plan_rows(d, r, kRowsPerBlock, rows);
  if (err != cudaSuccess || rows.blocks == 0) return err;
  return launch_typed(dtype, d, [&](auto tag, auto slots) { return launch(tag, slots, rows); });
}

}  // namespace fastattn::cuda
