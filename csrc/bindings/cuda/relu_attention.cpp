// CUDA kernels of relu_attention (forward, backward) for the operators of csrc/bindings/relu_attention.cpp.
#include <torch/library.h>

#include "bindings/cuda/glue.h"
#include "common/relu.h"
#include "cuda/relu_attention.cuh"

namespace fastattn::cuda_glue {
namespace {

using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

void check_norm(const Call& c, int64_t norm, int64_t quant) {
  TORCH_CHECK(norm >= 0 && norm <= 2, c.op, ": norm must be 0 (max), 1 (sum) or 2 (len), got ", norm);
  TORCH_CHECK(quant == 0 || quant == 7 || quant == 8, c.op, ": quant must be 0, 7 or 8 bits, got ", quant);
  TORCH_CHECK(quant == 0 || norm != kNormLen, c.op, ": quant needs norm max or sum");
}

Tensor3 fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& gamma,
            const at::Tensor& sink, const at::Tensor& alibi, const at::Tensor& tau, bool causal, double scale,
            int64_t norm, int64_t quant, bool int8_qkv, const OptTensor& kpm, const OptTensor& cu_q,
            const OptTensor& cu_k, int64_t max_q, int64_t max_k) {
  const Call c("relu_attention_fwd (cuda)", q, k, v, kpm, cu_q, cu_k, max_q, max_k);
  TORCH_CHECK(!int8_qkv, c.op, ": int8_qkv is implemented by the triton and cpu backends");
  check_norm(c, norm, quant);
  const cuda::Shape& d = c.shape;
  auto out = c.out_rows();
  auto den = c.row_stat(0.0f);
  auto argmax = at::full({d.B, d.Hq, d.Nq}, -1, q.options().dtype(at::kInt));
  const cuda::ReluParams p{c.fwd_args(out, causal, scale), den.data_ptr<float>(), argmax.data_ptr<int32_t>(),
                           c.f32(gamma, "gamma", {d.Hq}), c.f32(sink, "sink", {d.Hq}),
                           c.f32(alibi, "alibi_slopes", {d.Hq}, true), c.f32(tau, "tau", {d.B, d.Hq, d.Nq}, true),
                           static_cast<int>(norm), static_cast<int>(quant)};
  c.check(cuda::relu_attention_fwd_cuda(p, c.dtype, c.stream));
  return {out, den, argmax};
}

// dgamma and dsink (Hq,) from the kernel's per-row terms (see cuda/relu_attention.cuh), in fp64.
std::tuple<at::Tensor, at::Tensor> head_grads(const at::Tensor& dden, const at::Tensor& part, const at::Tensor& den,
                                              const at::Tensor& gamma, const at::Tensor& sink, const at::Tensor& alibi,
                                              int64_t norm) {
  const auto f64 = at::kDouble;
  const auto rows_part = part.to(f64).sum({0, 2});
  const auto c = (norm == kNormLen ? dden.to(f64) * den.to(f64) : dden.to(f64) * sink.to(f64).view({1, -1, 1}));
  const auto slope = alibi.numel() ? alibi.to(f64) : at::zeros_like(rows_part);
  const auto g = gamma.to(f64);
  const auto dgamma = at::where(g != 0, (slope * rows_part - c.sum({0, 2})) / g, rows_part);
  return {dgamma.to(at::kFloat), dden.sum({0, 2})};
}

Bwd bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
        const at::Tensor& den, const at::Tensor& argmax, const at::Tensor& gamma, const at::Tensor& sink,
        const at::Tensor& alibi, const at::Tensor& tau, bool causal, double scale, int64_t norm, int64_t quant,
        bool int8_qkv, const OptTensor& kpm, const OptTensor& cu_q, const OptTensor& cu_k, int64_t max_q,
        int64_t max_k) {
  const Call c("relu_attention_bwd (cuda)", q, k, v, kpm, cu_q, cu_k, max_q, max_k);
  TORCH_CHECK(!int8_qkv, c.op, ": int8_qkv is implemented by the triton and cpu backends");
  check_norm(c, norm, quant);
  c.check_rows(out, "out");
  const cuda::Shape& d = c.shape;
  TORCH_CHECK(argmax.scalar_type() == at::kInt && argmax.is_contiguous() && argmax.numel() == d.B * d.Hq * d.Nq &&
                  argmax.device() == q.device(),
              c.op, ": argmax must be a contiguous int32 (B, Hq, Nq) tensor on q's device");
  const auto [dq, dk, dv] = c.zero_grads();
  auto rows = at::zeros({2, d.B, d.Hq, d.Nq}, q.options().dtype(at::kFloat));  // dden, dgamma terms
  const cuda::ReluBwdParams p{c.bwd_args(dout, {dq, dk, dv}, causal, scale), c.f32(den, "den", {d.B, d.Hq, d.Nq}),
                              argmax.data_ptr<int32_t>(), c.f32(gamma, "gamma", {d.Hq}), c.f32(sink, "sink", {d.Hq}),
                              c.f32(alibi, "alibi_slopes", {d.Hq}, true), c.f32(tau, "tau", {d.B, d.Hq, d.Nq}, true),
                              rows[0].data_ptr<float>(), rows[1].data_ptr<float>(), static_cast<int>(norm)};
  c.check(cuda::relu_attention_bwd_cuda(p, c.dtype, c.stream));
  auto [dgamma, dsink] = head_grads(rows[0], rows[1], den, gamma, sink, alibi, norm);
  return {dq, dk, dv, dgamma, dsink};
}

}  // namespace
}  // namespace fastattn::cuda_glue

TORCH_LIBRARY_IMPL(fastattn_C, CUDA, m) {
  m.impl("relu_attention_fwd", &fastattn::cuda_glue::fwd);
  m.impl("relu_attention_bwd", &fastattn::cuda_glue::bwd);
}
