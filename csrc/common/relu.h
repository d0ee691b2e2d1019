// Header-only ByteScale (ReLU attention) math shared by the CPU and CUDA kernels (docs/semantics.md §2).
#pragma once

#include <math.h>
#include <stdint.h>

#include "common/macros.h"

namespace fastattn {

enum ReluNorm : int { kNormMax = 0, kNormSum = 1, kNormLen = 2 };

// s_ij = gamma * (scale * q.k) - slope * |i' - j|; `g` is scale * q.k.
FASTATTN_HOST_DEVICE float relu_score(float g, float gamma, float slope, int64_t i_abs, int64_t j) {
  const int64_t x = i_abs - j;
  return gamma * g - slope * static_cast<float>(x < 0 ? -x : x);
}

// p <- floor(p * L + 0.5) / L, L = 2^bits - 1 (bits 0: unchanged).
FASTATTN_HOST_DEVICE float quantize_weight(float p, int bits) {
  if (bits == 0) return p;
  const float L = static_cast<float>((1 << bits) - 1);
  return floorf(p * L + 0.5f) / L;
}

// The integer level floor(p * L + 0.5) of a weight p in [0, 1].
FASTATTN_HOST_DEVICE int weight_level(float p, int bits) {
  const float L = static_cast<float>((1 << bits) - 1);
  return static_cast<int>(floorf(p * L + 0.5f));
}

// round half away from zero to an int8 level of x / scale (|x| <= 127 * scale by construction);
// a division, as the reference computes it, so ties round identically.
FASTATTN_HOST_DEVICE int8_t int8_level(float x, float scale) {
  const float y = x / scale;
  const float r = y >= 0.0f ? floorf(y + 0.5f) : -floorf(-y + 0.5f);
  return static_cast<int8_t>(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
}

}  // namespace fastattn
