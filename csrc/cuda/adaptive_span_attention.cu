// Torch-free CUDA forward of adaptive_span_attention: one warp per ACTIVE query row (the host
// compacts each head's rows with g > 0, so gated-off queries cost nothing), a block of kWarps
// consecutive compacted rows sharing kTileN-key tiles of K and V in shared memory. A block visits
// only the keys within reach (floor(fp32(R + span_h))) of its first..last row, so the cost is
// (active rows) x (span + R + tile). The span factor enters the online softmax as s + log m.
// Correctness-first like the softmax CUDA forward: the fast GPU path is the Triton kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/macros.h"
#include "common/online_softmax.h"
#include "cuda/device_common.cuh"
#include "cuda/adaptive_span_attention.cuh"

namespace fastattn::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxD = 256;

// The triangle-wave gate in fp64, term by term as the contract computes it.
__device__ __forceinline__ float gate(int64_t ip, float phase, float period, float duty) {
  const double t = (static_cast<double>(ip) + static_cast<double>(phase)) / static_cast<double>(period);
  const double u = 2.0 * (t - floor(t)) - 1.0;
  const double z = (fabs(u) - static_cast<double>(duty)) / (1.0 - static_cast<double>(duty));
  return static_cast<float>(z < 0.0 ? 0.0 : (z > 1.0 ? 1.0 : z));
}

template <typename T, int kSlots, int kTileN = (kSlots >= 8 ? 16 : 32)>
__global__ void __launch_bounds__(kWarps * 32) span_fwd_kernel(SpanParams p) {
  __shared__ float ks[kTileN][kSlots * 32];
  __shared__ float vs[kTileN][kSlots * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n_rb = (p.Nq + kWarps - 1) / kWarps;
  const int64_t blk = blockIdx.x, rb = blk % n_rb, bh = blk / n_rb;
  const int64_t b = bh / p.Hq, h = bh % p.Hq, hk = h / (p.Hq / p.Hk);
  const int64_t active = p.cnt ? p.cnt[h] : p.Nq;
  const int64_t c_first = rb * kWarps;
  if (c_first >= active) return;  // whole block past this head's active rows (block-uniform exit)
  const int64_t c = c_first + warp, c_last = imin(c_first + kWarps, active) - 1;
  const bool row_ok = c < active;
  auto row_of = [&](int64_t cc) -> int64_t { return p.idx ? p.idx[h * p.Nq + cc] : cc; };
  const int64_t i = row_ok ? row_of(c) : 0;
  const int64_t offset = p.Nk - p.Nq, ip = i + offset;
  const float A = p.ramp + p.span[h];  // m = clamp((A - x) / R, 0, 1)
  const int64_t reach = static_cast<int64_t>(floorf(fminf(A, static_cast<float>(p.Nq + p.Nk + 1))));
  const int64_t ip_first = row_of(c_first) + offset, ip_last = row_of(c_last) + offset;
  const int64_t lo = imin(imax(ip_first - reach, 0), p.Nk);
  const int64_t hi = imin(p.causal ? ip_last + 1 : ip_last + reach + 1, p.Nk);
  const T* q = static_cast<const T*>(p.q) + ((b * p.Hq + h) * p.Nq + i) * p.D;
  const T* k = static_cast<const T*>(p.k) + (b * p.Hk + hk) * p.Nk * p.D;
  const T* v = static_cast<const T*>(p.v) + (b * p.Hk + hk) * p.Nk * p.Dv;
  float qr[kSlots], acc[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int d = s * 32 + lane;
    qr[s] = (row_ok && d < p.D) ? to_f(q[d]) * p.scale : 0.0f;
    acc[s] = 0.0f;
  }
  OnlineSoftmax st;
  for (int64_t j0 = lo; j0 < hi; j0 += kTileN) {
    __syncthreads();
    for (int e = threadIdx.x; e < kTileN * kSlots * 32; e += blockDim.x) {
      const int r = e / (kSlots * 32), cc = e % (kSlots * 32);
      const int64_t j = j0 + r;
      ks[r][cc] = (j < hi && cc < p.D) ? to_f(k[j * p.D + cc]) : 0.0f;
      vs[r][cc] = (j < hi && cc < p.Dv) ? to_f(v[j * p.Dv + cc]) : 0.0f;
    }
    __syncthreads();
    if (!row_ok) continue;
    const int64_t n = imin(kTileN, hi - j0);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t xs = ip - (j0 + r);
      if (p.causal && xs < 0) break;  // keys only get farther in the future
      const float m = fminf(fmaxf((A - static_cast<float>(xs < 0 ? -xs : xs)) / p.ramp, 0.0f), 1.0f);
      if (m <= 0.0f) continue;  // warp-uniform: every lane has the same row
      float dot = 0.0f;
#pragma unroll
      for (int s = 0; s < kSlots; ++s) dot += qr[s] * ks[r][s * 32 + lane];
      const float score = warp_sum(dot) + (m < 1.0f ? logf(m) : 0.0f);
      const OnlineSoftmax::Step step = st.push(score);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) acc[s] = acc[s] * step.rescale + step.weight * vs[r][s * 32 + lane];
    }
  }
  if (!row_ok) return;
  const int64_t row = (b * p.Hq + h) * p.Nq + i;
  const float g = p.period ? gate(ip, p.phase[h], p.period[h], p.duty) : 1.0f;
  T* out = static_cast<T*>(p.out) + row * p.Dv;
  const float mult = st.sum > 0.0f ? g / st.sum : 0.0f;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int d = s * 32 + lane;
    if (d < p.Dv) out[d] = from_f<T>(acc[s] * mult);
  }
  if (lane == 0) p.lse[row] = st.lse();
}

template <typename T>
cudaError_t launch(const SpanParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.Nq + kWarps - 1) / kWarps * p.B * p.Hq;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;  // gridDim.x limit (2^31 - 1)
  const dim3 grid(static_cast<unsigned>(blocks));
  by_slots(p.D, p.Dv, [&](auto slots) {
    span_fwd_kernel<T, decltype(slots)::value><<<grid, kWarps * 32, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t adaptive_span_attention_fwd_cuda(const SpanParams& p, int dtype, cudaStream_t stream) {
  if (p.D < 1 || p.Dv < 1 || p.D > kMaxD || p.Dv > kMaxD) return cudaErrorInvalidValue;
  if (p.Hk <= 0 || p.Hq % p.Hk != 0 || !(p.ramp > 0.0f) || !(p.duty >= 0.0f && p.duty < 1.0f)) {
    return cudaErrorInvalidValue;
  }
  if ((p.period == nullptr) != (p.phase == nullptr) || (p.idx == nullptr) != (p.cnt == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.B * p.Hq * p.Nq == 0 || p.Nk == 0) return cudaSuccess;
  return by_dtype(dtype, [&](auto tag) { return launch<decltype(tag)>(p, stream); });
}

}  // namespace fastattn::cuda
