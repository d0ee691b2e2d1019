// Input checks shared by the fused CPU attention kernels.
#include "cpu/attention_common.h"

#include <ATen/ATen.h>

namespace fastattn::cpu {

void check_attention_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            c10::DeviceType device, bool kv_rows_only) {
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->dim() == 4, op, ": q, k, v must be 4-D (B, H, N, D), got ", t->sizes());
    if (t->numel() == 0) {  // nothing is read: any strides (e.g. an empty cache as a transposed view)
    } else if (kv_rows_only && t != &q) {  // (N, D) row-major within each (batch, head); any batch/head strides
      TORCH_CHECK((t->size(3) <= 1 || t->stride(3) == 1) && (t->size(2) <= 1 || t->stride(2) == t->size(3)), op,
                  ": k and v must have contiguous (N, D) blocks per batch and head, got strides ", t->strides());
    } else {
      TORCH_CHECK(t->is_contiguous(), op, ": q, k, v must be contiguous");
    }
    TORCH_CHECK(t->device().type() == device && t->device() == q.device(), op, ": q, k, v must be ", device,
                " tensors on one device, got ", t->device());
  }
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": dtype must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(k.scalar_type() == dt && v.scalar_type() == dt, op, ": q, k, v must share a dtype");
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), op, ": batch sizes differ");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0 && v.size(1) == k.size(1), op,
              ": q heads must be a multiple of k/v heads (k and v heads equal)");
  TORCH_CHECK(k.size(2) == v.size(2), op, ": k and v lengths differ");
  TORCH_CHECK(k.size(3) == q.size(3), op, ": q and k head dims differ");
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= 256 && v.size(3) >= 1 && v.size(3) <= 256, op,
              ": head dims must be in [1, 256], got D=", q.size(3), " Dv=", v.size(3));
}

Dims check_kv_view_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_attention_inputs(op, q, k, v, c10::DeviceType::CPU, /*kv_rows_only=*/true);
  Dims d = dims_of(q, k, v);
  d.ksb = k.stride(0), d.ksh = k.stride(1), d.vsb = v.stride(0), d.vsh = v.stride(1);
  return d;
}

void check_tau(const char* op, const at::Tensor& tau, const at::Tensor& q) {
  if (tau.numel() == 0) return;
  TORCH_CHECK(tau.scalar_type() == at::kFloat && tau.is_contiguous() && tau.dim() == 3 && tau.size(0) == q.size(0) &&
                  tau.size(1) == q.size(1) && tau.size(2) == q.size(2),
              op, ": tau must be a contiguous float32 (B, Hq, Nq) tensor or empty, got ", tau.sizes(), " ",
              tau.scalar_type());
}

void check_head_param(const char* op, const char* name, const at::Tensor& t, int64_t Hq, bool optional) {
  if (optional && t.numel() == 0) return;
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == Hq && t.is_contiguous() &&
                  t.device().is_cpu(),
              op, ": ", name, " must be a contiguous float32 CPU tensor of shape (", Hq, ",)", optional ? " or empty" : "",
              ", got ", t.sizes(), " ", t.scalar_type());
}

}  // namespace fastattn::cpu
