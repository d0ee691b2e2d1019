// Torch-free CUDA relu_attention (docs/semantics.md §2), forward and backward: raw pointers and a stream.
// Contract: fastattn/ops/relu_attention.py (the backward is the gradient of the unquantized op).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/problem.h"

namespace fastattn::cuda {

struct ReluParams : FwdArgs {
  float* den;       // (B, Hq, Nq): sink + max | sum | count; NaN on NaN rows
  int32_t* argmax;  // (B, Hq, Nq): key index j (local to the row's sequence) of the max weight (norm max), else -1
  const float* gamma;   // (Hq,)
  const float* sink;    // (Hq,)
  const float* slopes;  // (Hq,) or null (no ALiBi)
  const float* tau;     // (B, Hq, Nq) top-K threshold or null
  int norm;  // 0 max, 1 sum, 2 len
  int bits;  // 0, 7 or 8
};

// dq: every row written.
struct ReluBwdParams : BwdArgs {
  const float* den;  // the forward's
  const int32_t* argmax;
  const float* gamma;
  const float* sink;
  const float* slopes;  // or null
  const float* tau;     // or null
  float* dden;          // (B, Hq, Nq) out: dL/dden per row (dsink_h is its sum over rows)
  float* dgamma_part;   // (B, Hq, Nq) out: per row, sum_j ds_ij |i' - j| (gamma_h != 0) or sum_j ds_ij G_ij
  int norm;
};

// dtype: 0 float32, 1 float16, 2 bfloat16. Head dims up to kMaxHeadDim. Returns the launch error.
cudaError_t relu_attention_fwd_cuda(const ReluParams& p, int dtype, cudaStream_t stream);
// dq, dk, dv, dden and the per-row dgamma terms; the caller reduces dgamma and dsink (Hq,) from them:
//   dsink_h = sum_rows dden; dgamma_h = (slope_h sum_rows part - sum_rows c) / gamma_h where gamma_h != 0
//   (c = dden * sink_h, or dden * den for norm len), else sum_rows part.
cudaError_t relu_attention_bwd_cuda(const ReluBwdParams& p, int dtype, cudaStream_t stream);

}  // namespace fastattn::cuda
