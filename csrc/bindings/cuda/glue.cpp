// Shared CUDA glue; see glue.h.
#include "bindings/cuda/glue.h"

#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "common/selection.h"
#include "cpu/attention_common.h"

namespace fastattn::cuda_glue {
namespace {

int dtype_code(at::ScalarType t) { return t == at::kFloat ? 0 : (t == at::kHalf ? 1 : 2); }

cuda::Ragged ragged_args(const char* op, const at::Tensor& q, const at::Tensor& k, const OptTensor& kpm,
                         const OptTensor& cu_q, const OptTensor& cu_k, int64_t max_q, int64_t max_k) {
  TORCH_CHECK(max_q >= 0 && max_k >= 0, op, ": max_seqlen_q and max_seqlen_k must be >= 0, got ", max_q, ", ", max_k);
  TORCH_CHECK(cu_q.has_value() == cu_k.has_value(), op, ": cu_seqlens_q and cu_seqlens_k are given together");
  cuda::Ragged r{nullptr, nullptr, nullptr, q.size(0), max_q, max_k};
  if (kpm.has_value()) {
    TORCH_CHECK(!cu_q.has_value(), op, ": key_padding_mask and cu_seqlens exclude each other");
    TORCH_CHECK(kpm->scalar_type() == at::kBool && kpm->dim() == 2 && kpm->size(0) == q.size(0) &&
                    kpm->size(1) == k.size(2) && kpm->is_contiguous() && kpm->device() == q.device(),
                op, ": key_padding_mask must be a contiguous bool (B, Nk) = (", q.size(0), ", ", k.size(2),
                ") tensor on ", q.device(), ", got ", kpm->sizes(), " ", kpm->scalar_type(), " on ", kpm->device());
    r.key_padding_mask = kpm->data_ptr<bool>();
  }
  if (cu_q.has_value()) {
    for (const at::Tensor* t : {&*cu_q, &*cu_k}) {
      TORCH_CHECK(t->scalar_type() == at::kInt && t->dim() == 1 && t->numel() >= 1 && t->is_contiguous() &&
                      t->device() == q.device(),
                  op, ": cu_seqlens_q/k must be contiguous int32 (S + 1,) tensors on ", q.device(), ", got ",
                  t->sizes(), " ", t->scalar_type(), " on ", t->device());
    }
    TORCH_CHECK(cu_q->numel() == cu_k->numel(), op, ": cu_seqlens_q and cu_seqlens_k must have the same length");
    TORCH_CHECK(q.size(0) == 1, op, ": packed sequences (cu_seqlens) take B == 1, got B = ", q.size(0));
    r.cu_seqlens_q = cu_q->data_ptr<int32_t>();
    r.cu_seqlens_k = cu_k->data_ptr<int32_t>();
    r.num_seqs = cu_q->numel() - 1;
  }
  return r;
}

}  // namespace

Call::Call(const char* op_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, const OptTensor& kpm,
           const OptTensor& cu_q, const OptTensor& cu_k, int64_t max_q, int64_t max_k)
    : op(op_),
      q(q_),
      k(k_),
      v(v_),
      guard((fastattn::cpu::check_attention_inputs(op_, q_, k_, v_, at::kCUDA), q_.device())) {
  TORCH_CHECK(q.size(3) <= kMaxHeadDim && v.size(3) <= kMaxHeadDim, op, ": head dims up to ", kMaxHeadDim);
  shape = cuda::Shape{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  ragged = ragged_args(op, q, k, kpm, cu_q, cu_k, max_q, max_k);
  dtype = dtype_code(q.scalar_type());
  stream = c10::cuda::getCurrentCUDAStream();
}

void Call::check(cudaError_t err) const {
  TORCH_CHECK(err == cudaSuccess, op, ": ", cudaGetErrorString(err));
}

const float* Call::f32(const at::Tensor& t, const char* name, at::IntArrayRef sizes, bool optional) const {
  if (optional && (!t.defined() || t.numel() == 0)) return nullptr;
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.sizes() == sizes && t.is_contiguous() && t.device() == q.device(),
              op, ": ", name, " must be a contiguous float32 tensor of shape ", sizes, " on ", q.device(),
              optional ? " (or empty)" : "", ", got ", t.sizes(), " ", t.scalar_type(), " on ", t.device());
  return t.data_ptr<float>();
}

void Call::check_rows(const at::Tensor& t, const char* name) const {
  TORCH_CHECK(t.dim() == 4 && t.size(0) == shape.B && t.size(1) == shape.Hq && t.size(2) == shape.Nq &&
                  t.size(3) == shape.Dv && t.scalar_type() == q.scalar_type() && t.is_contiguous() &&
                  t.device() == q.device(),
              op, ": ", name, " must be a contiguous (B, Hq, Nq, Dv) tensor in q's dtype on q's device, got ", t.sizes());
}

at::Tensor Call::row_stat(float fill) const {
  auto opts = q.options().dtype(at::kFloat);
  return packed() ? at::full({shape.B, shape.Hq, shape.Nq}, fill, opts) : at::empty({shape.B, shape.Hq, shape.Nq}, opts);
}

at::Tensor Call::out_rows() const {
  const std::vector<int64_t> sizes{shape.B, shape.Hq, shape.Nq, shape.Dv};
  return packed() ? at::zeros(sizes, q.options()) : at::empty(sizes, q.options());
}

Tensor3 Call::zero_grads() const { return {at::zeros_like(q), at::zeros_like(k), at::zeros_like(v)}; }

cuda::FwdArgs Call::fwd_args(const at::Tensor& out, bool causal, double scale) const {
  return {q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), shape, ragged, causal, static_cast<float>(scale)};
}

cuda::BwdArgs Call::bwd_args(const at::Tensor& dout, const Tensor3& grads, bool causal, double scale) const {
  check_rows(dout, "dout");
  const auto& [dq, dk, dv] = grads;
  return {dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
          shape, ragged, causal, static_cast<float>(scale)};
}

}  // namespace fastattn::cuda_glue
