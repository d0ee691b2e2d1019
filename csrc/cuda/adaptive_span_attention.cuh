// Torch-free CUDA adaptive_span_attention (docs/semantics.md §4), forward and backward: raw pointers
// and a stream. The contract (math, gate, reach, skipping) is fastattn/ops/adaptive_span_attention.py's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/problem.h"

namespace fastattn::cuda {

// The skipping plan (filled by the launchers when there is a gate): each head's active query rows
// (g > 0), compacted in increasing order per sequence.
struct SpanPlan {
  int32_t* idx;  // (Hq, Nq) scratch: head h, sequence s: local rows at [h * Nq + q0_s, ...)
  int32_t* cnt;  // (plan sequences, Hq) scratch: active rows (plan sequences: 1 when dense, else S)
};

// out: gated-off rows are NOT written (the caller zero-fills).
struct SpanParams : FwdArgs {
  float* lse;           // (B, Hq, Nq) ungated; gated-off rows are NOT written (caller fills +inf)
  const float* span;    // (Hq,)
  const float* period;  // (Hq,) or null (no gate)
  const float* phase;   // (Hq,) or null
  SpanPlan plan;        // used with a gate
  float ramp, duty;
};

// dq: gated-off rows are NOT written (the caller zero-fills).
struct SpanBwdParams : BwdArgs {
  const void* out;  // the forward's
  const float* lse;
  const float* span;
  const float* period;  // or null
  const float* phase;   // or null
  SpanPlan plan;
  float* delta;       // (B, Hq, Nq) scratch, zero-filled by the caller
  float* dg;          // (B, Hq, Nq) scratch, zero-filled: dL/dg per active row
  float* dspan_rows;  // (B, Hq, Nq) scratch, zero-filled: the row's share of dL/dspan, times ramp
  float* dspan;       // (Hq,) out
  float* dperiod;     // (Hq,) out, or null without a gate
  float* dphase;      // (Hq,) out, or null
  float ramp, duty;
};

// dtype: 0 float32, 1 float16, 2 bfloat16. Head dims up to kMaxHeadDim. Returns the launch error.
cudaError_t adaptive_span_attention_fwd_cuda(const SpanParams& p, int dtype, cudaStream_t stream);
cudaError_t adaptive_span_attention_bwd_cuda(const SpanBwdParams& p, int dtype, cudaStream_t stream);

}  // namespace fastattn::cuda
