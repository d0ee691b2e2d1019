// Torch-free CUDA forward of topk_attention: one block per query row, its warps striding over the
// keys (one warp per key: lanes split the head dim, so loads are coalesced).
//   1. tau: the K-th largest allowed score by a 4-digit radix select over the order-preserving
//      uint32 image of the fp32 score (a 256-bin shared histogram per digit, the scores recomputed
//      each pass; no Nq x Nk buffer and no K limit), then lowered by the tie margin of
//      csrc/cpu/topk_attention.cpp (2e-5 * max(1, |tau|)).
//   2. a softmax over the kept keys (s >= tau): an online softmax per warp, merged across warps.
// The score of a key is computed by the same code in every pass, so passes agree bit for bit.
// Correctness-first like the other CUDA forwards; the fast GPU path is the Triton kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/online_softmax.h"
#include "cuda/device_common.cuh"
#include "cuda/topk_attention.cuh"

namespace fastattn::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxD = 256;
constexpr float kTieMargin = 2e-5f;  // same as csrc/cpu/topk_attention.cpp and kernels/topk_attention.py

// Larger float <-> larger unsigned key (negative floats flipped entirely, positive ones get the top bit).
__device__ __forceinline__ uint32_t order_key(float s) {
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

template <typename T, int kSlots>
__device__ __forceinline__ float score(const float* qs, const T* krow, int D, int lane) {
  float dot = 0.0f;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int d = s * 32 + lane;
    if (d < D) dot += qs[d] * to_f(krow[d]);
  }
  return warp_sum(dot);
}

template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarps * 32, 4) topk_fwd_kernel(TopkParams p) {
  __shared__ float qs[kSlots * 32];
  __shared__ uint32_t hist[256];
  __shared__ uint32_t sel_prefix, sel_k;
  __shared__ float w_max[kWarps], w_sum[kWarps];
  __shared__ float w_acc[kWarps][kSlots * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = blockIdx.x;  // (b, h, i)
  const int64_t i = row % p.Nq, bh = row / p.Nq, h = bh % p.Hq, b = bh / p.Hq, hk = h / (p.Hq / p.Hk);
  const T* q = static_cast<const T*>(p.q) + row * p.D;
  const T* k = static_cast<const T*>(p.k) + (b * p.Hk + hk) * p.Nk * p.D;
  const T* v = static_cast<const T*>(p.v) + (b * p.Hk + hk) * p.Nk * p.Dv;
  for (int d = threadIdx.x; d < kSlots * 32; d += blockDim.x) qs[d] = d < p.D ? to_f(q[d]) * p.scale : 0.0f;
  // Allowed keys: j < limit (causal: bottom-right aligned).
  const int64_t limit = p.causal ? imin(imax(i + p.Nk - p.Nq + 1, 0), p.Nk) : p.Nk;
  __syncthreads();

  // 1. tau. Digits from the most significant: keep the keys whose higher digits equal the prefix
  // found so far; the K-th largest key's next digit is where the count from the top reaches k.
  float tau = -INFINITY;
  if (limit >= p.topk) {  // exactly K allowed: tau is their smallest score, as on the CPU
    if (threadIdx.x == 0) {
      sel_prefix = 0u;
      sel_k = static_cast<uint32_t>(p.topk);
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int e = threadIdx.x; e < 256; e += blockDim.x) hist[e] = 0u;
      __syncthreads();
      const uint32_t prefix = sel_prefix;
      const uint32_t high = shift == 24 ? 0u : (0xffffffffu << (shift + 8));  // digits already fixed
      for (int64_t j = warp; j < limit; j += kWarps) {
        const uint32_t key = order_key(score<T, kSlots>(qs, k + j * p.D, static_cast<int>(p.D), lane));
        if (lane == 0 && (key & high) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        uint32_t kk = sel_k, above = 0u;
        int digit = 255;
        for (; digit > 0 && above + hist[digit] < kk; --digit) above += hist[digit];
        sel_k = kk - above;
        sel_prefix = prefix | (static_cast<uint32_t>(digit) << shift);
      }
      __syncthreads();
    }
    const float kth = key_float(sel_prefix);
    tau = kth - kTieMargin * fmaxf(1.0f, fabsf(kth));
  }

  // 2. softmax over the kept keys, one online softmax per warp.
  float acc[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) acc[s] = 0.0f;
  OnlineSoftmax st;
  for (int64_t j = warp; j < limit; j += kWarps) {
    const float s_j = score<T, kSlots>(qs, k + j * p.D, static_cast<int>(p.D), lane);
    if (!(s_j >= tau)) continue;  // warp-uniform (every lane holds the same sum)
    const OnlineSoftmax::Step step = st.push(s_j);
    const T* vr = v + j * p.Dv;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int d = s * 32 + lane;
      acc[s] = acc[s] * step.rescale + step.weight * (d < p.Dv ? to_f(vr[d]) : 0.0f);
    }
  }
  if (lane == 0) {
    w_max[warp] = st.max;
    w_sum[warp] = st.sum;
  }
#pragma unroll
  for (int s = 0; s < kSlots; ++s) w_acc[warp][s * 32 + lane] = acc[s];
  __syncthreads();
  // Merge the warps: M = max_w m_w, L = sum_w l_w e^(m_w - M), out = sum_w acc_w e^(m_w - M) / L.
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, w_max[w]);
  float L = 0.0f;
  for (int w = 0; w < kWarps; ++w) L += w_sum[w] > 0.0f ? w_sum[w] * expf(w_max[w] - M) : 0.0f;
  T* out = static_cast<T*>(p.out) + row * p.Dv;
  for (int d = threadIdx.x; d < p.Dv; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (w_sum[w] > 0.0f) o += w_acc[w][d] * expf(w_max[w] - M);
    out[d] = from_f<T>(L > 0.0f ? o / L : 0.0f);
  }
  if (threadIdx.x == 0) {
    p.lse[row] = L > 0.0f ? M + logf(L) : INFINITY;
    p.tau[row] = tau;
  }
}

template <typename T>
cudaError_t launch(const TopkParams& p, cudaStream_t stream) {
  const int64_t blocks = p.B * p.Hq * p.Nq;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;  // gridDim.x limit (2^31 - 1)
  const dim3 grid(static_cast<unsigned>(blocks));
  const int64_t dmax = p.D > p.Dv ? p.D : p.Dv;
  if (dmax <= 64) topk_fwd_kernel<T, 2><<<grid, kWarps * 32, 0, stream>>>(p);
  else if (dmax <= 128) topk_fwd_kernel<T, 4><<<grid, kWarps * 32, 0, stream>>>(p);
  else topk_fwd_kernel<T, 8><<<grid, kWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t topk_attention_fwd_cuda(const TopkParams& p, int dtype, cudaStream_t stream) {
  if (p.D < 1 || p.Dv < 1 || p.D > kMaxD || p.Dv > kMaxD || p.topk < 1) return cudaErrorInvalidValue;
  if (p.Hk <= 0 || p.Hq % p.Hk != 0) return cudaErrorInvalidValue;
  if (p.B * p.Hq * p.Nq == 0) return cudaSuccess;
  switch (dtype) {
    case 0: return launch<float>(p, stream);
    case 1: return launch<__half>(p, stream);
    case 2: return launch<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fastattn::cuda
