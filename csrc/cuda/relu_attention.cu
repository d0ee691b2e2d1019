// Torch-free CUDA relu_attention, correctness-first (the fast GPU path is the Triton kernel,
// kernels/relu_attention.py). Blocks are scheduled per (sequence, head, tile); key tiles holding only
// padding are skipped.
// Forward: one warp per query row, kWarps rows per block sharing K/V tiles staged in shared memory.
// Pass 1 computes the row statistic (and, unquantized, the output); with quantization pass 2 rounds
// p = a / den with the final denominator.
// Backward (the gradient of the unquantized op; fp32 accumulation, no Nq x Nk buffer, no atomics):
//   dq:   one warp per query row: pass 1 recomputes acc_i = sum_j a_ij v_j and gives
//         dden_i = -(dO_i . acc_i) / den_i^2; pass 2, over the keys with s_ij > 0,
//         dS_ij = dP_ij / den_i + dden_i [norm sum] + dden_i [norm max, j = argmax_i], dq += gamma scale dS k,
//         and the row's dgamma term;
//   dkdv: key-owning blocks (cuda/key_blocks.cuh): dv += (a / den) dO, dk += gamma scale dS q.
#include "cuda/relu_attention.cuh"

#include "common/relu.h"
#include "cuda/key_blocks.cuh"

namespace fastattn::cuda {
namespace {

constexpr int kWarps = 4;  // rows per block (forward, dq)

// What a relu row needs besides q: its head's constants and its own threshold.
struct ReluRow {
  float gs, slope, tau;  // gamma_h * scale, ALiBi slope (0 without), top-K threshold (-inf without)
  int64_t i_abs;         // i' = i + Nk_s - Nq_s
  __device__ __forceinline__ float score(float dot, int64_t j) const { return relu_score(dot, gs, slope, i_abs, j); }
};

// body(w, rw, q_i) for each warp row of a relu kernel's grid: the row, its constants, q_i in registers.
template <typename T, int kSlots, typename P, typename Body>
__device__ __forceinline__ void for_each_relu_row(const P& p, int64_t n_tiles, Body&& body) {
  for_each_warp_row<kWarps>(p.d, p.r, n_tiles, [&](const WarpRow& w) {
    float qr[kSlots];
    load_row<T, kSlots>(qr, row_ptr<T>(p.q, w.row, p.d.D), w.ok ? p.d.D : 0, 1.0f, threadIdx.x & 31);
    body(w, ReluRow{p.gamma[w.h] * p.scale, p.slopes ? p.slopes[w.h] : 0.0f,
                    (w.ok && p.tau) ? p.tau[w.row] : -INFINITY, w.i + w.sq.offset()},
         qr);
  });
}

template <typename T, int kSlots, int kTileN = tile_keys<kSlots>()>
__global__ void __launch_bounds__(kWarps * 32, 4) relu_fwd_kernel(ReluParams p, int64_t n_tiles) {
  __shared__ KVTile<kSlots, kTileN> sm;
  const int lane = threadIdx.x & 31;
  for_each_relu_row<T, kSlots>(p, n_tiles, [&](const WarpRow& w, const ReluRow& rw, const float (&qr)[kSlots]) {
    float acc[kSlots];
    zero_row<kSlots>(acc);
    float stat = 0.0f, den = 0.0f;
    int32_t arg = -1;
    bool any = false, bad = false;
    for (int pass = 0; pass < (p.bits ? 2 : 1); ++pass) {
      for_each_row_key<T, kSlots, kTileN>(sm, p.k, p.v, p.d, p.r, w, p.causal, [&](int64_t j, const float* kr,
                                                                                   const float* vr) {
        const float sc = rw.score(row_dot<kSlots>(qr, kr, lane), j);
        if (sc < rw.tau) return;  // dropped by top-K (a NaN score stays: it makes the row NaN)
        const float a = sc > 0.0f ? sc : 0.0f;
        float weight = a;  // what multiplies v_j in this pass
        if (pass == 0) {
          any = true;
          note_finite(bad, sc);
          note_finite_row<kSlots>(bad, vr, lane);
          if (p.norm == kNormMax) {
            if (a > stat) {
              stat = a;
              arg = static_cast<int32_t>(j);
            }
          } else {
            stat += p.norm == kNormSum ? a : 1.0f;
          }
          if (p.bits) return;
        } else {
          weight = quantize_weight(den > 0.0f ? div_rn(a, den) : 0.0f, p.bits);
        }
        axpy_row<kSlots>(acc, weight, vr, lane);
      });
      den = p.sink[w.h] + stat;
    }
    if (!w.ok) return;
    const float mult = p.bits ? 1.0f : (den > 0.0f ? 1.0f / den : 0.0f);
    const RowState rs = store_row<T, kSlots>(static_cast<T*>(p.out) + w.row * p.d.Dv, acc, mult, p.d.Dv, any, bad, lane);
    if (lane == 0) {
      p.den[w.row] = rs == kRowNaN ? NAN : den;
      p.argmax[w.row] = p.norm == kNormMax ? arg : -1;
    }
  });
}

// The gradient terms of key j in row i (score sc): P = a / den (dv's weight), dS (dk's and dq's,
// without the gamma scale factor). False when the key adds nothing (s <= 0, or below tau). A NaN
// row (den = NaN) gives NaN to every key it may read, so its gradients come out non-finite.
struct ReluGrad {
  float den, dden;  // the row's
  int32_t argmax;   // norm max: the key whose weight is the denominator's; else -1
  int norm;
  __device__ __forceinline__ bool nan_row() const { return isnan(den); }
  __device__ __forceinline__ float inv() const { return den > 0.0f ? 1.0f / den : 0.0f; }
  template <typename DP>
  __device__ __forceinline__ bool terms(float sc, float tau, int64_t j, DP&& dp, float& P, float& dS) const {
    if (sc < tau) return false;
    if (nan_row()) {
      P = dS = NAN;
      return true;
    }
    if (!(sc > 0.0f)) return false;
    P = sc * inv();
    dS = dp() * inv() + (norm == kNormSum ? dden : 0.0f) + (j == argmax ? dden : 0.0f);
    return true;
  }
};

template <typename T, int kSlots, int kTileN = tile_keys<kSlots>()>
__global__ void __launch_bounds__(kWarps * 32, 4) relu_bwd_dq_kernel(ReluBwdParams p, int64_t n_tiles) {
  __shared__ KVTile<kSlots, kTileN> sm;
  const int lane = threadIdx.x & 31;
  for_each_relu_row<T, kSlots>(p, n_tiles, [&](const WarpRow& w, const ReluRow& rw, const float (&qr)[kSlots]) {
    float dor[kSlots], acc[kSlots];
    load_row<T, kSlots>(dor, row_ptr<T>(p.dout, w.row, p.d.Dv), w.ok ? p.d.Dv : 0, 1.0f, lane);
    zero_row<kSlots>(acc);
    ReluGrad g{w.ok ? p.den[w.row] : 0.0f, 0.0f, (w.ok && p.norm == kNormMax) ? p.argmax[w.row] : -1, p.norm};
    // Pass 1: acc = sum_j a_ij v_j (also where out was quantized) -> dden.
    for_each_row_key<T, kSlots, kTileN>(sm, p.k, p.v, p.d, p.r, w, p.causal, [&](int64_t j, const float* kr,
                                                                                 const float* vr) {
      const float sc = rw.score(row_dot<kSlots>(qr, kr, lane), j);
      if (sc >= rw.tau && sc > 0.0f) axpy_row<kSlots>(acc, sc, vr, lane);
    });
    const float dot = row_dot<kSlots>(dor, acc);
    g.dden = g.nan_row() ? NAN : (g.den > 0.0f ? -dot / (g.den * g.den) : 0.0f);
    if (w.ok && lane == 0) p.dden[w.row] = g.dden;
    // Pass 2: dS over the row's keys -> dq, and the row's dgamma term (identity: |x|; else G = scale q.k).
    const bool identity = p.gamma[w.h] != 0.0f;
    double part = 0.0;
    zero_row<kSlots>(acc);  // now dq
    for_each_row_key<T, kSlots, kTileN>(sm, p.k, p.v, p.d, p.r, w, p.causal, [&](int64_t j, const float* kr,
                                                                                 const float* vr) {
      const float qk = row_dot<kSlots>(qr, kr, lane);
      float P, dS;
      if (!g.terms(rw.score(qk, j), rw.tau, j, [&] { return row_dot<kSlots>(dor, vr, lane); }, P, dS)) return;
      axpy_row<kSlots>(acc, dS, kr, lane);
      const int64_t x = rw.i_abs - j;
      part += static_cast<double>(dS) * (identity ? static_cast<double>(x < 0 ? -x : x) : p.scale * qk);
    });
    if (!w.ok) return;
    save_row<T, kSlots>(static_cast<T*>(p.dq) + w.row * p.d.D, acc, rw.gs, p.d.D, lane);
    if (lane == 0) p.dgamma_part[w.row] = static_cast<float>(part);
  });
}

template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarpsKV * 32, 2) relu_bwd_dkdv_kernel(ReluBwdParams p, int64_t n_tiles) {
  enum { kDen, kDden, kArgmax, kTau, kVals };
  key_blocks<T, kSlots, kVals>(  // q staged as is; gamma_h * scale goes into dS
      p, 1.0f, n_tiles, CausalRows{p.causal},
      [&](const Seq&, int64_t, int64_t row, int64_t, float* val) {
        val[kDen] = p.den[row];
        val[kDden] = p.dden[row];
        val[kArgmax] = __int_as_float(p.norm == kNormMax ? p.argmax[row] : -1);
        val[kTau] = p.tau ? p.tau[row] : -INFINITY;
      },
      [&](const KeyPair<kSlots>& e, float& P, float& dS) {
        if (p.causal && e.dist() < 0) return false;
        const ReluGrad g{e.val[kDen], e.val[kDden], __float_as_int(e.val[kArgmax]), p.norm};
        const float gs = p.gamma[e.h] * p.scale, slope = p.slopes ? p.slopes[e.h] : 0.0f;
        const float sc = relu_score(e.qk(), gs, slope, e.i + e.sq.offset(), e.j);
        if (!g.terms(sc, e.val[kTau], e.j, [&] { return e.dp(); }, P, dS)) return false;
        dS *= gs;
        return true;
      });
}

}  // namespace

cudaError_t relu_attention_fwd_cuda(const ReluParams& p, int dtype, cudaStream_t stream) {
  if (p.norm < 0 || p.norm > 2 || (p.bits != 0 && p.bits != 7 && p.bits != 8)) return cudaErrorInvalidValue;
  return launch_rows<kWarps>(dtype, p.d, p.r, [&](auto tag, auto slots, const Grid& rows) {
    relu_fwd_kernel<decltype(tag), decltype(slots)::value><<<rows.dim(), kWarps * 32, 0, stream>>>(p, rows.tiles);
    return cudaSuccess;
  });
}

cudaError_t relu_attention_bwd_cuda(const ReluBwdParams& p, int dtype, cudaStream_t stream) {
  if (p.norm < 0 || p.norm > 2) return cudaErrorInvalidValue;
  return launch_backward<kWarps>(dtype, p, stream, [](auto tag, auto slots) {
    using T = decltype(tag);
    constexpr int S = decltype(slots)::value;
    return BwdKernels<ReluBwdParams>{relu_bwd_dq_kernel<T, S>, relu_bwd_dkdv_kernel<T, S>};
  });
}

}  // namespace fastattn::cuda
