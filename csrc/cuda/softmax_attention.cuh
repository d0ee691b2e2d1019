// Torch-free CUDA softmax_attention (docs/semantics.md §1), forward and backward: raw pointers and a stream.
// The backward also serves topk_attention (its selection fixed by tau).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/problem.h"

namespace fastattn::cuda {

struct SoftmaxParams : FwdArgs {
  float* lse;  // (B, Hq, Nq): log-sum-exp; +inf on rows with no allowed key, NaN on NaN rows
};

// dq: every row written.
struct SoftmaxBwdParams : BwdArgs {
  const void* out;   // the forward's
  const float* lse;
  const float* tau;  // (B, Hq, Nq): keys with s < tau were not attended (top-K); or null
  float* delta;      // (B, Hq, Nq) scratch: dout . out per row
};

// dtype: 0 float32, 1 float16, 2 bfloat16. Head dims up to kMaxHeadDim. Returns the launch error.
cudaError_t softmax_attention_fwd_cuda(const SoftmaxParams& p, int dtype, cudaStream_t stream);
cudaError_t softmax_attention_bwd_cuda(const SoftmaxBwdParams& p, int dtype, cudaStream_t stream);

}  // namespace fastattn::cuda
