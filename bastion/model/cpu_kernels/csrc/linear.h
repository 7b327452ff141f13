// Linear layers on CPU (see linear.cpp).
#pragma once

#include <torch/extension.h>

namespace bastion {

// y = x W^T (+ bias) with W bfloat16 in the blocked layout of blocked.h ([ceil(N / 16), K / 2, 16, 2]).
torch::Tensor linear_blocked(const torch::Tensor& x, const torch::Tensor& packed, int64_t out_features,
                             const c10::optional<torch::Tensor>& bias);

// y = (x q^T) * scale (+ bias), q int8 [N, K], scale and bias float32 [N], x bfloat16 or float32.
torch::Tensor linear_int8(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& bias);

}  // namespace bastion
