// The torch side of the torch-free CUDA launchers (csrc/cuda/*.cuh), shared by
// csrc/bindings/cuda/<op>.cpp: argument checks, the launchers' problem description (sizes, the
// ragged-batch arguments of CONTRACTS §1, dtype code), the device guard and stream, and launch errors
// turned into exceptions that name the op. These files build the module fastattn._C_cuda, which
// registers CUDA kernels for the operators the CPU module fastattn._C defines.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "cuda/problem.h"

namespace fastattn::cuda_glue {

using OptTensor = std::optional<at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// One call of a CUDA kernel stage. The constructor checks q, k, v (contiguous 4-D CUDA tensors of
// one float dtype on one device, GQA shapes, head dims within the kernels' limit) and the ragged
// arguments, and makes q's device current for the call.
class Call {
 public:
  Call(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_padding_mask,
       const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k);

  // Throws (naming the op) unless the launcher returned cudaSuccess.
  void check(cudaError_t err) const;
  // A float32 CUDA tensor of exactly `sizes` on q's device: its data; an empty or undefined tensor when
  // `optional`: null.
  const float* f32(const at::Tensor& t, const char* name, at::IntArrayRef sizes, bool optional = false) const;
  // dout / out of a backward: contiguous (B, Hq, Nq, Dv) in q's dtype.
  void check_rows(const at::Tensor& t, const char* name) const;
  // A new (B, Hq, Nq) float32 row statistic; rows outside every sequence (packed) hold `fill`.
  at::Tensor row_stat(float fill) const;
  // A new output like q but with Dv columns (zeros where a packed call covers no sequence).
  at::Tensor out_rows() const;
  bool packed() const { return ragged.cu_seqlens_q != nullptr; }
  // New zero gradients dq, dk, dv (like q, k, v).
  Tensor3 zero_grads() const;
  // The arguments every forward launcher takes first: q, k, v, `out` and the problem.
  cuda::FwdArgs fwd_args(const at::Tensor& out, bool causal, double scale) const;
  // The arguments every backward launcher takes first: `dout` (checked as check_rows does), q, k, v,
  // the gradients `grads` (from zero_grads) and the problem.
  cuda::BwdArgs bwd_args(const at::Tensor& dout, const Tensor3& grads, bool causal, double scale) const;

  const char* op;
  at::Tensor q, k, v;
  c10::cuda::CUDAGuard guard;
  cuda::Shape shape;
  cuda::Ragged ragged;
  int dtype;  // the launchers' code: 0 float32, 1 float16, 2 bfloat16
  cudaStream_t stream;
};

// The softmax gradient on CUDA (softmax_attention_bwd, and topk_attention_bwd with its tau):
// -> dq, dk, dv. Defined in softmax_attention.cpp.
Tensor3 softmax_backward(const char* op, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& tau,
                         bool causal, double scale, const OptTensor& key_padding_mask, const OptTensor& cu_seqlens_q,
                         const OptTensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k);

}  // namespace fastattn::cuda_glue
