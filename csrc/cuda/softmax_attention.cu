// Torch-free CUDA softmax_attention, correctness-first (the fast GPU path is the Triton kernel,
// kernels/softmax_attention.py). Blocks are scheduled per (sequence, head, tile): no tile spans two
// sequences, and key tiles holding only padding are skipped.
// Forward: one warp per query row, a block of kWarps rows sharing kTileN-key tiles of K and V staged
// in shared memory; q.k is a warp all-reduce; the online softmax keeps (max, sum) per row.
// Backward (fp32 accumulation, no Nq x Nk buffer, no atomics), two kernels:
//   dq:   one warp per query row, as the forward: delta_i = dO_i . O_i (kept for the next kernel),
//         then over the row's keys P = exp(s - lse), dP = dO . v, dS = P (dP - delta), dq += scale dS k;
//   dkdv: one block per (sequence, kv head, kKeys keys), each warp holding its keys' k, v, dk, dv in
//         registers, walking the query rows of every head of its GQA group in staged tiles:
//         dv += P dO, dk += dS (scale q).
#include "cuda/softmax_attention.cuh"

#include "common/online_softmax.h"
#include "cuda/key_blocks.cuh"

namespace fastattn::cuda {
namespace {

constexpr int kWarps = 4;  // rows per block (forward, dq)

template <typename T, int kSlots, int kTileN = tile_keys<kSlots>()>
__global__ void __launch_bounds__(kWarps * 32, 4) softmax_fwd_kernel(SoftmaxParams p, int64_t n_tiles) {
  __shared__ KVTile<kSlots, kTileN> sm;
  const int lane = threadIdx.x & 31;
  for_each_warp_row<kWarps>(p.d, p.r, n_tiles, [&](const WarpRow& w) {
    float qr[kSlots];
    load_row<T, kSlots>(qr, row_ptr<T>(p.q, w.row, p.d.D), w.ok ? p.d.D : 0, p.scale, lane);
    SoftmaxRow<kSlots> row;
    for_each_row_key<T, kSlots, kTileN>(sm, p.k, p.v, p.d, p.r, w, p.causal, [&](int64_t, const float* kr, const float* vr) {
      row.add(row_dot<kSlots>(qr, kr, lane), vr, lane);
    });
    if (w.ok) row.store(static_cast<T*>(p.out) + w.row * p.d.Dv, p.lse + w.row, p.d.Dv, 1.0f, lane);
  });
}

// Whether key j (score s) is in a row with threshold tau and log-sum-exp L: top-K keeps s >= tau;
// on NaN rows (L = NaN) every allowed key is, so the row's gradients come out NaN.
__device__ __forceinline__ bool kept(float s, float tau, float L) { return s >= tau || isnan(L); }

template <typename T, int kSlots, int kTileN = tile_keys<kSlots>()>
__global__ void __launch_bounds__(kWarps * 32, 4) softmax_bwd_dq_kernel(SoftmaxBwdParams p, int64_t n_tiles) {
  __shared__ KVTile<kSlots, kTileN> sm;
  const int lane = threadIdx.x & 31;
  const Shape& d = p.d;
  for_each_warp_row<kWarps>(d, p.r, n_tiles, [&](const WarpRow& w) {
    GradRow<T, kSlots> g(p.q, p.dout, p.out, d, w.row, w.ok, p.scale, lane);
    if (w.ok && lane == 0) p.delta[w.row] = g.delta;
    const float L = w.ok ? p.lse[w.row] : INFINITY;  // +inf: no key, P = 0
    const float tau = (w.ok && p.tau) ? p.tau[w.row] : -INFINITY;
    for_each_row_key<T, kSlots, kTileN>(sm, p.k, p.v, d, p.r, w, p.causal, [&](int64_t, const float* kr, const float* vr) {
      const float s = row_dot<kSlots>(g.q, kr, lane);
      if (!kept(s, tau, L)) return;  // warp-uniform
      axpy_row<kSlots>(g.dq, __expf(s - L) * (row_dot<kSlots>(g.dout, vr, lane) - g.delta), kr, lane);
    });
    if (w.ok) save_row<T, kSlots>(static_cast<T*>(p.dq) + w.row * d.D, g.dq, p.scale, d.D, lane);
  });
}

template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarpsKV * 32, 2) softmax_bwd_dkdv_kernel(SoftmaxBwdParams p, int64_t n_tiles) {
  enum { kL, kDelta, kTau, kVals };
  key_blocks<T, kSlots, kVals>(  // q staged times scale: dk += dS (scale q)
      p, p.scale, n_tiles, CausalRows{p.causal},
      [&](const Seq&, int64_t, int64_t row, int64_t, float* val) {
        val[kL] = p.lse[row];
        val[kDelta] = p.delta[row];
        val[kTau] = p.tau ? p.tau[row] : -INFINITY;
      },
      [&](const KeyPair<kSlots>& e, float& P, float& dS) {
        if (p.causal && e.dist() < 0) return false;
        const float s = e.qk(), L = e.val[kL];
        if (!kept(s, e.val[kTau], L)) return false;
        P = __expf(s - L);
        dS = P * (e.dp() - e.val[kDelta]);
        return true;
      });
}

}  // namespace

cudaError_t softmax_attention_fwd_cuda(const SoftmaxParams& p, int dtype, cudaStream_t stream) {
  return launch_rows<kWarps>(dtype, p.d, p.r, [&](auto tag, auto slots, const Grid& rows) {
    softmax_fwd_kernel<decltype(tag), decltype(slots)::value><<<rows.dim(), kWarps * 32, 0, stream>>>(p, rows.tiles);
    return cudaSuccess;
  });
}

cudaError_t softmax_attention_bwd_cuda(const SoftmaxBwdParams& p, int dtype, cudaStream_t stream) {
  // (no rows: nothing to do; the caller zero-fills the gradients)
  return launch_backward<kWarps>(dtype, p, stream, [](auto tag, auto slots) {
    using T = decltype(tag);
    constexpr int S = decltype(slots)::value;
    return BwdKernels<SoftmaxBwdParams>{softmax_bwd_dq_kernel<T, S>, softmax_bwd_dkdv_kernel<T, S>};
  });
}

}  // namespace fastattn::cuda
