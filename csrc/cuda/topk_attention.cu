// Torch-free CUDA forward of topk_attention: one block per query row (b, h, i), its warps striding
// over the row's allowed keys (one warp per key: lanes split the head dim, so loads are coalesced).
//   1. tau: the K-th largest allowed score (repeats counted) by a 4-digit radix select over the
//      order-preserving uint32 image of the fp32 score: a 256-bin shared histogram per 8-bit digit,
//      the scores recomputed each pass. No Nq x Nk buffer and no limit on K. The K-th score is then
//      lowered by the tie margin of csrc/cpu/topk_attention.cpp: tau = t - 2e-5 * max(1, |t|).
//   2. a softmax over the kept keys (s >= tau): an online softmax per warp, merged across warps.
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
constexpr unsigned kFull = 0xffffffffu;

// fp32 -> uint32 with a < b  <=>  key(a) < key(b) (for non-NaN a, b): negative floats get all bits
// flipped (larger magnitude -> smaller key), non-negative ones just the sign bit set.
__device__ __forceinline__ uint32_t order_key(float s) {
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// s_j = (scale * q) . k_j, lanes splitting the head dim; the butterfly sum leaves the same bits in
// every lane. Explicit fmaf: every inlined copy rounds identically, so the radix passes and the
// softmax pass see the same score for a key (a contraction choice differing per call site would
// make the histograms disagree).
template <typename T, int kSlots>
__device__ __forceinline__ float score(const float* qs, const T* krow, int D, int lane) {
  float dot = 0.0f;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int d = s * 32 + lane;
    if (d < D) dot = __fmaf_rn(qs[d], to_f(krow[d]), dot);
  }
  return warp_sum(dot);
}

// blockDim = kWarps * 32; grid = B * Hq * Nq (one block per row). kSlots * 32 >= max(D, Dv).
template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarps * 32, 4) topk_fwd_kernel(TopkParams p) {
  __shared__ float qs[kSlots * 32];  // scale * q_i, fp32
  __shared__ uint32_t hist[256];
  __shared__ uint32_t sel_prefix, sel_k;  // digits of the K-th key found so far; its rank among them
  __shared__ float w_max[kWarps], w_sum[kWarps];
  __shared__ float w_acc[kWarps][kSlots * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = blockIdx.x;  // (b * Hq + h) * Nq + i
  const int64_t i = row % p.Nq, bh = row / p.Nq, h = bh % p.Hq, b = bh / p.Hq, hk = h / (p.Hq / p.Hk);
  const T* q = static_cast<const T*>(p.q) + row * p.D;
  const T* k = static_cast<const T*>(p.k) + (b * p.Hk + hk) * p.Nk * p.D;
  const T* v = static_cast<const T*>(p.v) + (b * p.Hk + hk) * p.Nk * p.Dv;
  const int D = static_cast<int>(p.D);
  for (int d = threadIdx.x; d < kSlots * 32; d += blockDim.x) qs[d] = d < D ? to_f(q[d]) * p.scale : 0.0f;
  // Allowed keys: j < limit (causal: bottom-right aligned, j <= i + Nk - Nq).
  const int64_t limit = p.causal ? imin(imax(i + p.Nk - p.Nq + 1, 0), p.Nk) : p.Nk;
  if (threadIdx.x == 0) {
    sel_prefix = 0u;
    sel_k = static_cast<uint32_t>(p.topk);  // <= limit <= Nk whenever it is used
  }
  __syncthreads();

  // 1. tau (block-uniform branch). Digits from the most significant: pass `shift` counts the keys
  // whose higher digits equal the prefix found so far, by their digit at `shift`; the K-th largest
  // key's digit is where the count from the top reaches sel_k.
  float tau = -INFINITY;  // fewer than K allowed keys: all of them are kept
  if (limit >= p.topk) {   // exactly K allowed: tau is their smallest score, as on the CPU
#pragma unroll 1
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int e = threadIdx.x; e < 256; e += blockDim.x) hist[e] = 0u;
      __syncthreads();
      const uint32_t prefix = sel_prefix;
      const uint32_t fixed = shift == 24 ? 0u : (kFull << (shift + 8));  // the digits already found
      for (int64_t j = warp; j < limit; j += kWarps) {
        const uint32_t key = order_key(score<T, kSlots>(qs, k + j * p.D, D, lane));
        if (lane == 0 && (key & fixed) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
      }
      __syncthreads();
      // Warp 0 finds the digit: lane L owns digits 255-8L down to 248-8L; a scan of the lane totals
      // (from the top digit) finds the lane where the count reaches kk, which walks its 8 digits.
      if (warp == 0) {
        const uint32_t kk = sel_k;
        const int top = 255 - 8 * lane;
        uint32_t mine = 0u;
#pragma unroll
        for (int e = 0; e < 8; ++e) mine += hist[top - e];
        uint32_t incl = mine;  // keys in digits >= top - 7
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const uint32_t n = __shfl_up_sync(kFull, incl, o);
          if (lane >= o) incl += n;
        }
        const unsigned hit = __ballot_sync(kFull, incl >= kk);
        const int owner = hit ? __ffs(static_cast<int>(hit)) - 1 : 31;  // hit == 0 cannot happen: guard
        if (lane == owner) {
          uint32_t above = incl - mine;  // keys in higher digits
          int digit = top;
          while (digit > top - 7 && above + hist[digit] < kk) above += hist[digit--];
          sel_k = kk - above;
          sel_prefix = prefix | (static_cast<uint32_t>(digit) << shift);
        }
      }
      __syncthreads();
    }
    const float kth = key_float(sel_prefix);
    tau = kth - __fmul_rn(kTieMargin, fmaxf(1.0f, fabsf(kth)));  // no fma: the CPU's with_margin rounding
  }

  // 2. softmax over the kept keys, one online softmax per warp.
  float acc[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) acc[s] = 0.0f;
  OnlineSoftmax st;
  for (int64_t j = warp; j < limit; j += kWarps) {
    const float s_j = score<T, kSlots>(qs, k + j * p.D, D, lane);
    if (!(s_j >= tau)) continue;  // warp-uniform: every lane holds the same sum
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
  // Warps that kept nothing (l_w = 0, m_w = -inf) are skipped; no kept key at all: zeros, lse = +inf.
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
  by_slots(p.D, p.Dv, [&](auto slots) {
    topk_fwd_kernel<T, decltype(slots)::value><<<grid, kWarps * 32, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t topk_attention_fwd_cuda(const TopkParams& p, int dtype, cudaStream_t stream) {
  if (p.D < 1 || p.Dv < 1 || p.D > kMaxD || p.Dv > kMaxD || p.topk < 1) return cudaErrorInvalidValue;
  if (p.Hk <= 0 || p.Hq % p.Hk != 0) return cudaErrorInvalidValue;
  if (p.B * p.Hq * p.Nq == 0) return cudaSuccess;  // Nk == 0 runs: every row writes zeros, +inf, -inf
  return by_dtype(dtype, [&](auto tag) { return launch<decltype(tag)>(p, stream); });
}

}  // namespace fastattn::cuda
