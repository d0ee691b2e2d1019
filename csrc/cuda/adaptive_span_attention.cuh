// Torch-free CUDA forward of adaptive_span_attention (docs/semantics.md §4): raw pointers and a stream.
// The contract (math, gate, reach, skipping) is fastattn/ops/adaptive_span_attention.py's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastattn::cuda {

struct SpanParams {
  const void* q;        // (B, Hq, Nq, D), contiguous
  const void* k;        // (B, Hk, Nk, D)
  const void* v;        // (B, Hk, Nk, Dv)
  void* out;            // (B, Hq, Nq, Dv), q's dtype; gated-off rows are NOT written (caller zero-fills)
  float* lse;           // (B, Hq, Nq) ungated; gated-off rows are NOT written (caller fills +inf)
  const float* span;    // (Hq,)
  const float* period;  // (Hq,) or nullptr (no gate)
  const float* phase;   // (Hq,) or nullptr
  const int32_t* idx;   // (Hq, Nq): each head's active query rows first, increasing; nullptr = all rows
  const int32_t* cnt;   // (Hq,): active rows per head; nullptr = Nq
  int64_t B, Hq, Hk, Nq, Nk, D, Dv;
  float ramp, duty;
  bool causal;
  float scale;
};

// dtype: 0 float32, 1 float16, 2 bfloat16. Head dims up to 256. Returns the launch error, if any.
cudaError_t adaptive_span_attention_fwd_cuda(const SpanParams& p, int dtype, cudaStream_t stream);

}  // namespace fastattn::cuda
