// Torch-free CUDA forward of relu_attention: one warp per query row, kWarps rows per block sharing
// K/V tiles staged in shared memory. Pass 1 computes the row statistic (and, unquantized, the
// output); with quantization pass 2 rounds p = a / den with the final denominator. Correctness-
// first; the fast GPU path is the Triton kernel (kernels/relu_attention.py).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/macros.h"
#include "common/relu.h"
#include "cuda/device_common.cuh"
#include "cuda/relu_attention.cuh"

namespace fastattn::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxD = 256;

template <typename T, int kSlots, int kTileN = (kSlots >= 8 ? 16 : 32)>
__global__ void __launch_bounds__(kWarps * 32) relu_fwd_kernel(ReluParams p) {
  __shared__ float ks[kTileN][kSlots * 32];
  __shared__ float vs[kTileN][kSlots * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t bh = blockIdx.y, b = bh / p.Hq, h = bh % p.Hq, hk = h / (p.Hq / p.Hk);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const bool row_ok = i < p.Nq;
  const T* q = static_cast<const T*>(p.q) + ((b * p.Hq + h) * p.Nq + (row_ok ? i : 0)) * p.D;
  const T* k = static_cast<const T*>(p.k) + (b * p.Hk + hk) * p.Nk * p.D;
  const T* v = static_cast<const T*>(p.v) + (b * p.Hk + hk) * p.Nk * p.Dv;
  const float gs = p.gamma[h] * p.scale, slope = p.slopes ? p.slopes[h] : 0.0f;
  const float tau = (p.tau && row_ok) ? p.tau[(b * p.Hq + h) * p.Nq + i] : -INFINITY;
  float qr[kSlots], acc[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int d = s * 32 + lane;
    qr[s] = (row_ok && d < p.D) ? to_f(q[d]) : 0.0f;
    acc[s] = 0.0f;
  }
  const int64_t offset = p.Nk - p.Nq, i_abs = i + offset;
  const int64_t last_row = imin(static_cast<int64_t>(blockIdx.x) * kWarps + kWarps - 1, p.Nq - 1);
  const int64_t kend = p.causal ? imax(0, imin(p.Nk, last_row + offset + 1)) : p.Nk;
  const int64_t limit = p.causal ? imax(0, imin(p.Nk, i + offset + 1)) : p.Nk;
  float stat = 0.0f, den = 0.0f;
  int32_t arg = -1;
  for (int pass = 0; pass < (p.bits ? 2 : 1); ++pass) {
    for (int64_t j0 = 0; j0 < kend; j0 += kTileN) {
      __syncthreads();
      for (int idx = threadIdx.x; idx < kTileN * kSlots * 32; idx += blockDim.x) {
        const int r = idx / (kSlots * 32), c = idx % (kSlots * 32);
        const int64_t j = j0 + r;
        ks[r][c] = (j < p.Nk && c < p.D) ? to_f(k[j * p.D + c]) : 0.0f;
        vs[r][c] = (j < p.Nk && c < p.Dv) ? to_f(v[j * p.Dv + c]) : 0.0f;
      }
      __syncthreads();
      if (!row_ok) continue;
      const int64_t n = imin(kTileN, limit - j0);
      for (int64_t r = 0; r < n; ++r) {
        float dot = 0.0f;
#pragma unroll
        for (int s = 0; s < kSlots; ++s) dot += qr[s] * ks[r][s * 32 + lane];
        const float sc = relu_score(warp_sum(dot), gs, slope, i_abs, j0 + r);
        if (sc < tau) continue;  // dropped by top-K
        const float a = sc > 0.0f ? sc : 0.0f;
        float w = a;  // weight multiplying v_j in this pass
        if (pass == 0) {
          if (p.norm == kNormMax) {
            if (a > stat) { stat = a; arg = static_cast<int32_t>(j0 + r); }
          } else {
            stat += p.norm == kNormSum ? a : 1.0f;
          }
          if (p.bits) continue;
        } else {
          w = quantize_weight(den > 0.0f ? a / den : 0.0f, p.bits);
        }
#pragma unroll
        for (int s = 0; s < kSlots; ++s) acc[s] += w * vs[r][s * 32 + lane];
      }
    }
    den = p.sink[h] + stat;
  }
  if (!row_ok) return;
  const int64_t row = (b * p.Hq + h) * p.Nq + i;
  T* out = static_cast<T*>(p.out) + row * p.Dv;
  const float mult = p.bits ? 1.0f : (den > 0.0f ? 1.0f / den : 0.0f);
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int d = s * 32 + lane;
    if (d < p.Dv) out[d] = from_f<T>(acc[s] * mult);
  }
  if (lane == 0) {
    p.den[row] = den;
    p.argmax[row] = p.norm == kNormMax ? arg : -1;
  }
}

template <typename T>
cudaError_t launch(const ReluParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.Nq + kWarps - 1) / kWarps), static_cast<unsigned>(p.B * p.Hq));
  by_slots(p.D, p.Dv, [&](auto slots) {
    relu_fwd_kernel<T, decltype(slots)::value><<<grid, kWarps * 32, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t relu_attention_fwd_cuda(const ReluParams& p, int dtype, cudaStream_t stream) {
  if (p.D > kMaxD || p.Dv > kMaxD) return cudaErrorInvalidValue;
  if (p.B * p.Hq * p.Nq == 0) return cudaSuccess;
  return by_dtype(dtype, [&](auto tag) { return launch<decltype(tag)>(p, stream); });
}

}  // namespace fastattn::cuda
