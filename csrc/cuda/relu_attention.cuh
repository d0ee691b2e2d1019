// Torch-free CUDA forward of relu_attention (docs/semantics.md §2): raw pointers and a stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastattn::cuda {

struct ReluParams {
  const void* q;  // (B, Hq, Nq, D), contiguous
  const void* k;  // (B, Hk, Nk, D)
  const void* v;  // (B, Hk, Nk, Dv)
  void* out;      // (B, Hq, Nq, Dv), q's dtype
  float* den;     // (B, Hq, Nq): sink + max | sum | count
  int32_t* argmax;  // (B, Hq, Nq): index of the max weight (norm max), else -1
  const float* gamma;   // (Hq,)
  const float* sink;    // (Hq,)
  const float* slopes;  // (Hq,) or null (no ALiBi)
  const float* tau;     // (B, Hq, Nq) top-K threshold or null
  int64_t B, Hq, Hk, Nq, Nk, D, Dv;
  bool causal;
  float scale;
  int norm;  // 0 max, 1 sum, 2 len
  int bits;  // 0, 7 or 8
};

// dtype: 0 float32, 1 float16, 2 bfloat16. Head dims up to 256.
cudaError_t relu_attention_fwd_cuda(const ReluParams& p, int dtype, cudaStream_t stream);

}  // namespace fastattn::cuda
