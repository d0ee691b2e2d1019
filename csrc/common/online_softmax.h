// Online (streaming) softmax over one row, shared by the CPU and CUDA kernels: push scores one at
// a time; each push says how to rescale the running accumulator and what weight the new value gets.
#pragma once

#include <math.h>

#include "common/macros.h"

namespace fastattn {

struct OnlineSoftmax {
  float max = -INFINITY;  // running max of the scores
  float sum = 0.0f;       // running sum of exp(score - max)

  struct Step {
    float rescale;  // multiply the accumulator by this
    float weight;   // then add weight * value
  };

  FASTATTN_HOST_DEVICE Step push(float score) {
    if (score == -INFINITY) return Step{1.0f, 0.0f};  // masked key
    const float m_new = score > max ? score : max;
    const float rescale = expf(max - m_new);  // 0 when max was -inf
    const float w = expf(score - m_new);
    sum = sum * rescale + w;
    max = m_new;
    return Step{rescale, w};
  }

  // log sum exp of the pushed scores; +inf when nothing was pushed (so exp(s - lse) = 0).
  FASTATTN_HOST_DEVICE float lse() const { return sum > 0.0f ? max + logf(sum) : INFINITY; }
};

}  // namespace fastattn
