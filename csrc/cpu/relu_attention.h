// Fused, tiled CPU ByteScale ReLU attention (docs/semantics.md §2), forward and backward.
// Contract: fastattn/ops/relu_attention.py. Absent alibi_slopes / tau are empty tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "cpu/varlen.h"

namespace fastattn::cpu {

// -> out (B, Hq, Nq, Dv), den fp32 (B, Hq, Nq), argmax int32 (B, Hq, Nq)
std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& gamma, const at::Tensor& sink,
    const at::Tensor& alibi_slopes, const at::Tensor& tau, bool causal, double scale, int64_t norm, int64_t quant,
    bool int8_qkv, const RaggedArgs& ra = {});

// -> dq, dk, dv, dgamma (Hq,), dsink (Hq,): the gradient of the unquantized op. int8_qkv: q, k are the
// forward's int8-rounded operands (level * scale), whose scores are recomputed from the levels.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> relu_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& den, const at::Tensor& argmax, const at::Tensor& gamma, const at::Tensor& sink,
    const at::Tensor& alibi_slopes, const at::Tensor& tau, bool causal, double scale, int64_t norm, int64_t quant,
    bool int8_qkv, const RaggedArgs& ra = {});

}  // namespace fastattn::cpu
