// Torch-free CUDA forward of softmax_attention (docs/semantics.md §1): raw pointers and a stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastattn::cuda {

struct SoftmaxParams {
  const void* q;  // (B, Hq, Nq, D), contiguous
  const void* k;  // (B, Hk, Nk, D)
  const void* v;  // (B, Hk, Nk, Dv)
  void* out;      // (B, Hq, Nq, Dv), q's dtype
  float* lse;     // (B, Hq, Nq): log-sum-exp, +inf on rows with no allowed key
  int64_t B, Hq, Hk, Nq, Nk, D, Dv;
  bool causal;
  float scale;
};

// dtype: 0 float32, 1 float16, 2 bfloat16. Head dims up to 256. Returns the launch error, if any.
cudaError_t softmax_attention_fwd_cuda(const SoftmaxParams& p, int dtype, cudaStream_t stream);

}  // namespace fastattn::cuda
