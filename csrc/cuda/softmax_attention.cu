// Torch-free CUDA forward of softmax_attention: one warp per query row, a block of kWarps rows
// sharing kTileN-key tiles of K and V staged in shared memory. Each lane owns D/32 (rounded up)
// head-dim slots; q.k is a warp all-reduce; the online softmax keeps (max, sum) per row.
// Correctness-first: the fast GPU path is the Triton kernel (kernels/softmax_attention.py).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/macros.h"
#include "common/online_softmax.h"
#include "cuda/device_common.cuh"
#include "cuda/softmax_attention.cuh"

namespace fastattn::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxD = 256;

// kSlots = ceil(max(D, Dv) / 32) head-dim elements per lane.
// kTileN keys per staged tile: 2 * kTileN * kSlots * 32 floats stay within 48 KB static smem.
template <typename T, int kSlots, int kTileN = (kSlots >= 8 ? 16 : 32)>
__global__ void __launch_bounds__(kWarps * 32) softmax_fwd_kernel(SoftmaxParams p) {
  __shared__ float ks[kTileN][kSlots * 32];
  __shared__ float vs[kTileN][kSlots * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // 1-D grid (gridDim.y/z are capped at 65535, B * Hq is not): block = (b, h) x row block.
  const int64_t n_rb = (p.Nq + kWarps - 1) / kWarps;
  const int64_t blk = blockIdx.x, rb = blk % n_rb, bh = blk / n_rb;
  const int64_t b = bh / p.Hq, h = bh % p.Hq, hk = h / (p.Hq / p.Hk);
  const int64_t i = rb * kWarps + warp;
  const bool row_ok = i < p.Nq;
  const T* q = static_cast<const T*>(p.q) + ((b * p.Hq + h) * p.Nq + (row_ok ? i : 0)) * p.D;
  const T* k = static_cast<const T*>(p.k) + (b * p.Hk + hk) * p.Nk * p.D;
  const T* v = static_cast<const T*>(p.v) + (b * p.Hk + hk) * p.Nk * p.Dv;
  float qr[kSlots], acc[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int d = s * 32 + lane;
    qr[s] = (row_ok && d < p.D) ? to_f(q[d]) * p.scale : 0.0f;
    acc[s] = 0.0f;
  }
  const int64_t offset = p.Nk - p.Nq;
  // Keys any row of this block may see.
  const int64_t last_row = imin(rb * kWarps + kWarps - 1, p.Nq - 1);
  const int64_t kend = p.causal ? imax(0, imin(p.Nk, last_row + offset + 1)) : p.Nk;
  const int64_t limit = p.causal ? imax(0, imin(p.Nk, i + offset + 1)) : p.Nk;
  OnlineSoftmax st;
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
      const float score = warp_sum(dot);
      const OnlineSoftmax::Step step = st.push(score);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) acc[s] = acc[s] * step.rescale + step.weight * vs[r][s * 32 + lane];
    }
  }
  if (!row_ok) return;
  const int64_t row = (b * p.Hq + h) * p.Nq + i;
  T* out = static_cast<T*>(p.out) + row * p.Dv;
  const float inv = st.sum > 0.0f ? 1.0f / st.sum : 0.0f;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int d = s * 32 + lane;
    if (d < p.Dv) out[d] = from_f<T>(acc[s] * inv);
  }
  if (lane == 0) p.lse[row] = st.lse();
}

template <typename T>
cudaError_t launch(const SoftmaxParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.Nq + kWarps - 1) / kWarps * p.B * p.Hq;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;  // gridDim.x limit (2^31 - 1)
  const dim3 grid(static_cast<unsigned>(blocks));
  by_slots(p.D, p.Dv, [&](auto slots) {
    softmax_fwd_kernel<T, decltype(slots)::value><<<grid, kWarps * 32, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t softmax_attention_fwd_cuda(const SoftmaxParams& p, int dtype, cudaStream_t stream) {
  if (p.D < 1 || p.Dv < 1 || p.D > kMaxD || p.Dv > kMaxD) return cudaErrorInvalidValue;
  if (p.Hk <= 0 || p.Hq % p.Hk != 0) return cudaErrorInvalidValue;
  if (p.B * p.Hq * p.Nq == 0) return cudaSuccess;
  return by_dtype(dtype, [&](auto tag) { return launch<decltype(tag)>(p, stream); });
}

}  // namespace fastattn::cuda
