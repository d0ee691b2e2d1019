// The key-owning backward kernels' shared part (dk, dv without atomics): a block owns kKeys keys of
// one (sequence, kv head), kKPW per warp with their k, v, dk, dv rows in registers, and walks the
// query rows that can see them, for every query head of the GQA group, in staged tiles of kRowsKV
// rows (q times a factor, dout, and kVals per-row values). Each op says, per (row, key) pair, whether
// the key is in the row and with which gradient terms: P (dv_j += P dout_i) and dS (dk_j += dS q~_i).
// Also the host side of a backward: its dq and dk/dv launches.
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
  float val[kRowsKV][kVals];         // per-row values (statistics) the op stages
};

struct RowRange {
  int64_t lo, hi;  // local query rows lo .. hi
};

// rows() of an op whose rows see every earlier key: all rows, or under causality those with i' >= j0.
struct CausalRows {
  bool causal;
  __device__ __forceinline__ RowRange operator()(const Seq& sq, int64_t, int64_t j0, int64_t) const {
    return RowRange{causal ? iclamp(j0 - sq.offset(), 0, sq.nq) : 0, sq.nq};
  }
};

// One (query row i, key j) pair as pair() sees it: the row from the staged tile (q~_i, dout_i and the
// op's kVals values), the key's k_j, v_j from registers.
template <int kSlots>
struct KeyPair {
  const Seq& sq;
  int64_t h, i, j;
  const float (&k)[kSlots];
  const float (&v)[kSlots];
  const float* q;     // q~_i (shared memory)
  const float* dout;  // dout_i
  const float* val;   // the row's values
  int lane;
  __device__ __forceinline__ int64_t dist() const { return i + sq.offset() - j; }  // i' - j (< 0: a future key)
  __device__ __forceinline__ float qk() const { return row_dot<kSlots>(k, q, lane); }     // q~_i . k_j
  __device__ __forceinline__ float dp() const { return row_dot<kSlots>(v, dout, lane); }  // dout_i . v_j
};

// One grid of key-owning blocks ((sequence, kv head, key tile) blocks; every thread calls it), with
// q staged times q_mult:
//   rows(sq, h, j0, j_end) -> RowRange: the rows of head h that may see keys j0 .. j_end;
//   vals(sq, h, row, i, val): stage the kVals values of the row (flat index `row`, local row i) in val[];
//   pair(const KeyPair<kSlots>&, P&, dS&) -> false when the key is not in the row.
template <typename T, int kSlots, int kVals, typename Rows, typename Vals, typename Pair>
__device__ __forceinline__ void key_blocks(const BwdArgs& a, float q_mult, int64_t n_tiles, Rows&& rows, Vals&& vals,
                                           Pair&& pair) {
  constexpr int kKPW = keys_per_warp<kSlots>(), kKeys = keys_per_block<kSlots>();
  __shared__ RowTile<kSlots, kVals> sm;
  const Shape& d = a.d;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const GridTask task = grid_task(d.Hk, n_tiles);
  const Seq sq = seq_at(d, a.r, task.s);
  const int64_t hk = task.h, group = d.Hq / d.Hk;
  for (int64_t tile = task.tile; tile * kKeys < sq.nk; tile += task.n_tiles) {
    const int64_t j0 = tile * kKeys, j_end = imin(j0 + kKeys, sq.nk);
    float kr[kKPW][kSlots], vr[kKPW][kSlots], gk[kKPW][kSlots], gv[kKPW][kSlots];
    bool own[kKPW];
    bool mine = false;
#pragma unroll
    for (int c = 0; c < kKPW; ++c) {
      const int64_t j = j0 + warp * kKPW + c;
      own[c] = j < sq.nk && key_exists(d, a.r, sq, j);
      mine |= own[c];
      const int64_t kv = kv_index(d, sq, hk, own[c] ? j : 0);
      load_row<T, kSlots>(kr[c], row_ptr<T>(a.k, kv, d.D), own[c] ? d.D : 0, 1.0f, lane);
      load_row<T, kSlots>(vr[c], row_ptr<T>(a.v, kv, d.Dv), own[c] ? d.Dv : 0, 1.0f, lane);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) gk[c][s] = gv[c][s] = 0.0f;
    }
    const bool work = __syncthreads_or(mine);  // a tile of padding only: its gradients are zeros
    for (int64_t h = hk * group; work && h < (hk + 1) * group; ++h) {
      const RowRange rr = rows(sq, h, j0, j_end);
      for (int64_t i0 = rr.lo; i0 < rr.hi; i0 += kRowsKV) {
        __syncthreads();  // the previous rows' readers are done
        const int64_t row0 = q_index(d, sq, h, i0), n = imin(kRowsKV, rr.hi - i0);
        stage_rows<T, kRowsKV, kSlots * 32>(sm.q, row_ptr<T>(a.q, row0, d.D), 0, n, d.D, q_mult);
        stage_rows<T, kRowsKV, kSlots * 32>(sm.dout, row_ptr<T>(a.dout, row0, d.Dv), 0, n, d.Dv);
        if (threadIdx.x < n) vals(sq, h, row0 + threadIdx.x, i0 + threadIdx.x, sm.val[threadIdx.x]);
        __syncthreads();
        for (int t = 0; t < n; ++t) {
#pragma unroll
          for (int c = 0; c < kKPW; ++c) {
            float P, dS;
            if (!own[c]) continue;
            const KeyPair<kSlots> e{sq, h, i0 + t, j0 + warp * kKPW + c, kr[c], vr[c], sm.q[t], sm.dout[t], sm.val[t],
                                    lane};
            if (!pair(e, P, dS)) continue;  // warp-uniform
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
      save_row<T, kSlots>(static_cast<T*>(a.dk) + kv * d.D, gk[c], 1.0f, d.D, lane);
      save_row<T, kSlots>(static_cast<T*>(a.dv) + kv * d.Dv, gv[c], 1.0f, d.Dv, lane);
    }
  }
}

// The kernels of a backward for one element type and slot count: (params, tiles per grid row).
template <typename P>
struct BwdKernels {
  void (*dq)(P, int64_t);    // over query rows
  void (*dkdv)(P, int64_t);  // over key-owning blocks
};

// Host: a backward's launches. kernels(T{}, slots) -> BwdKernels<P>: the dq kernel over query rows
// (kRowsPerBlock per block), then the key-owning dk/dv kernel (which reads what the first wrote; not
// launched without keys).
template <int kRowsPerBlock, typename P, typename Kernels>
cudaError_t launch_backward(int dtype, const P& p, cudaStream_t stream, Kernels&& kernels) {
  return launch_rows<kRowsPerBlock>(dtype, p.d, p.r, [&](auto tag, auto slots, const Grid& rows) {
    Grid keys;
    const cudaError_t err = plan_keys(p.d, p.r, keys_per_block<decltype(slots)::value>(), keys);
    if (err != cudaSuccess) return err;
    const BwdKernels<P> k = kernels(tag, slots);
    k.dq<<<rows.dim(), kRowsPerBlock * 32, 0, stream>>>(p, rows.tiles);
    if (keys.blocks > 0) k.dkdv<<<keys.dim(), kWarpsKV * 32, 0, stream>>>(p, keys.tiles);
    return cudaSuccess;
  });
}

}  // namespace fastattn::cuda
