// The key-owning backward kernels' shared part (dk, dv without atomics): a block owns kKeys keys of
// one (sequence, kv head), kKPW per warp with their k, v, dk, dv rows in registers, and walks the
// query rows that can see them, for every query head of the GQA group, in staged tiles of kRowsKV
// rows (q times a factor, dout, and kVals per-row values). Each op says, per (row, key) pair, whether
// the key is in the row and with which gradient terms: P (dv_j += P dout_i) and dS (dk_j += dS q~_i).
#pragma once

#include "cuda/warp_rows.cuh"

namespace fastattn::cuda {

constexpr int kWarpsKV = 8;  // warps per block
constexpr int kRowsKV = 16;  // query rows per staged tile

// Keys per warp: their k, v, dk, dv rows in registers, 4 * kKPW * kSlots = 32 floats.
template <int kSlots>
__host__ __device__ constexpr int keys_per_warp() { return 8 / kSlots; }
template <int kSlots>
__host__ __device__ constexpr int keys_per_block() { return kWarpsKV * keys_per_warp<kSlots>(); }

template <int kSlots, int kVals>
struct RowTile {
  float q[kRowsKV][kSlots * 32];     // q rows times the kernel's factor
  float dout[kRowsKV][kSlots * 32];
  float val[kVals][kRowsKV];         // per-row values (statistics) the op stages
};

struct RowRange {
  int64_t lo, hi;  // local query rows lo .. hi
};

// One grid of key-owning blocks ((sequence, kv head, key tile) blocks; every thread calls it).
//   rows(sq, h, j0, j_end) -> RowRange: the rows of head h that may see keys j0 .. j_end;
//   vals(sq, h, t, row, i): thread t stages the values of tile row t (flat index `row`, local row i);
//   pair(sq, h, i, j, t, k_j, v_j, P&, dS&) -> false when key j is not in row i (t: its tile row).
template <typename T, int kSlots, int kVals, typename Rows, typename Vals, typename Pair>
__device__ __forceinline__ void key_blocks(RowTile<kSlots, kVals>& sm, const Shape& d, const Ragged& r,
                                           const void* q, const void* k, const void* v, const void* dout, void* dk,
                                           void* dv, float q_mult, int64_t n_tiles, Rows&& rows, Vals&& vals,
                                           Pair&& pair) {
  constexpr int kKPW = keys_per_warp<kSlots>(), kKeys = keys_per_block<kSlots>();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const GridTask task = grid_task(d.Hk, n_tiles);
  const Seq sq = seq_at(d, r, task.s);
  const int64_t hk = task.h, group = d.Hq / d.Hk;
  for (int64_t tile = task.tile; tile * kKeys < sq.nk; tile += task.n_tiles) {
    const int64_t j0 = tile * kKeys, j_end = imin(j0 + kKeys, sq.nk);
    float kr[kKPW][kSlots], vr[kKPW][kSlots], gk[kKPW][kSlots], gv[kKPW][kSlots];
    bool own[kKPW];
    bool mine = false;
#pragma unroll
    for (int c = 0; c < kKPW; ++c) {
      const int64_t j = j0 + warp * kKPW + c;
      own[c] = j < sq.nk && key_exists(d, r, sq, j);
      mine |= own[c];
      const int64_t kv = kv_index(d, sq, hk, own[c] ? j : 0);
      load_row<T, kSlots>(kr[c], static_cast<const T*>(k) + kv * d.D, own[c] ? d.D : 0, 1.0f, lane);
      load_row<T, kSlots>(vr[c], static_cast<const T*>(v) + kv * d.Dv, own[c] ? d.Dv : 0, 1.0f, lane);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) gk[c][s] = gv[c][s] = 0.0f;
    }
    const bool work = __syncthreads_or(mine);  // a tile of padding only: its gradients are zeros
    for (int64_t h = hk * group; work && h < (hk + 1) * group; ++h) {
      const RowRange rr = rows(sq, h, j0, j_end);
      for (int64_t i0 = rr.lo; i0 < rr.hi; i0 += kRowsKV) {
        __syncthreads();  // the previous rows' readers are done
        const int64_t row0 = q_index(d, sq, h, i0), n = imin(kRowsKV, rr.hi - i0);
        stage_rows<T, kRowsKV, kSlots * 32>(sm.q, static_cast<const T*>(q) + row0 * d.D, 0, n, d.D, q_mult);
        stage_rows<T, kRowsKV, kSlots * 32>(sm.dout, static_cast<const T*>(dout) + row0 * d.Dv, 0, n, d.Dv);
        if (threadIdx.x < n) vals(sq, h, static_cast<int>(threadIdx.x), row0 + threadIdx.x, i0 + threadIdx.x);
        __syncthreads();
        for (int t = 0; t < n; ++t) {
#pragma unroll
          for (int c = 0; c < kKPW; ++c) {
            float P, dS;
            if (!own[c] || !pair(sq, h, i0 + t, j0 + warp * kKPW + c, t, kr[c], vr[c], P, dS)) continue;  // warp-uniform
#pragma unroll
            for (int s = 0; s < kSlots; ++s) {
              gv[c][s] += P * sm.dout[t][s * 32 + lane];
              gk[c][s] += dS * sm.q[t][s * 32 + lane];
            }
          }
        }
      }
    }
#pragma unroll
    for (int c = 0; c < kKPW; ++c) {
      const int64_t j = j0 + warp * kKPW + c;
      if (j >= sq.nk) continue;
      const int64_t kv = kv_index(d, sq, hk, j);  // padding keys get zeros
      save_row<T, kSlots>(static_cast<T*>(dk) + kv * d.D, gk[c], 1.0f, d.D, lane);
      save_row<T, kSlots>(static_cast<T*>(dv) + kv * d.Dv, gv[c], 1.0f, d.Dv, lane);
    }
  }
}

// Host: the two kernels of a backward, the dq kernel over query rows (kRowsPerBlock per block) and
// then the key-owning dk/dv kernel (which reads what the first wrote): launch(T{}, slots, rows, keys)
// -> cudaError_t with both grids planned (keys.blocks = 0: no keys).
template <int kRowsPerBlock, typename F>
cudaError_t launch_backward(int dtype, const Shape& d, const Ragged& r, F&& launch) {
  return launch_rows<kRowsPerBlock>(dtype, d, r, [&](auto tag, auto slots, const Grid& rows) {
    Grid keys;
    const cudaError_t err = plan_keys(d, r, keys_per_block<decltype(slots)::value>(), keys);
    return err != cudaSuccess ? err : launch(tag, slots, rows, keys);
  });
}

}  // namespace fastattn::cuda
