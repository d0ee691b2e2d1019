// Torch-free CUDA forward of topk_attention (docs/semantics.md §3): raw pointers and a stream. The contract
// (tau with the tie margin, lse, empty rows) is csrc/cpu/topk_attention.h's; the backward is the
// softmax backward restricted to s >= tau (cuda/softmax_attention.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/problem.h"

namespace fastattn::cuda {

struct TopkParams : FwdArgs {
  float* lse;     // (B, Hq, Nq): log-sum-exp over the kept keys; +inf with no allowed key, NaN on NaN rows
  float* tau;     // (B, Hq, Nq): the K-th largest allowed score lowered by the tie margin; -inf if < K allowed
  void* scratch;  // topk_attention_fwd_scratch(p) bytes (the key-split path of decoding), or null if 0
  int64_t topk;
};

// Scratch bytes the forward needs on the current device (0: one block per row, no split).
size_t topk_attention_fwd_scratch(const TopkParams& p);

// dtype: 0 float32, 1 float16, 2 bfloat16. Head dims up to kMaxHeadDim; topk >= 1 (no upper limit:
// the selection is a radix select). Returns the launch error, if any.
cudaError_t topk_attention_fwd_cuda(const TopkParams& p, int dtype, cudaStream_t stream);

}  // namespace fastattn::cuda
