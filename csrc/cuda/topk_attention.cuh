// Torch-free CUDA forward of topk_attention (docs/semantics.md §3): raw pointers and a stream. The contract
// (tau with the tie margin, lse, empty rows) is csrc/cpu/topk_attention.h's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastattn::cuda {

struct TopkParams {
  const void* q;  // (B, Hq, Nq, D), contiguous
  const void* k;  // (B, Hk, Nk, D)
  const void* v;  // (B, Hk, Nk, Dv)
  void* out;      // (B, Hq, Nq, Dv), q's dtype
  float* lse;     // (B, Hq, Nq): log-sum-exp over the kept keys, +inf on rows with no allowed key
  float* tau;     // (B, Hq, Nq): the K-th largest allowed score lowered by the tie margin; -inf if < K allowed
  int64_t B, Hq, Hk, Nq, Nk, D, Dv, topk;
  bool causal;
  float scale;
};

// dtype: 0 float32, 1 float16, 2 bfloat16. Head dims up to 256; topk >= 1 (no upper limit: the
// selection is a radix select). Returns the launch error, if any.
cudaError_t topk_attention_fwd_cuda(const TopkParams& p, int dtype, cudaStream_t stream);

}  // namespace fastattn::cuda
