// RMSNorm (with the residual add before it) and SiLU(gate) * up in one pass (elementwise.cpp).
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace bastion {

// (weight * rms_norm(x + residual), x + residual) with a residual; (weight * rms_norm(x), None)
// without; x [..., N] bfloat16 or float32, weight [N] in x's dtype or float32.
std::tuple<torch::Tensor, c10::optional<torch::Tensor>> rms_norm(const torch::Tensor& x, const torch::Tensor& weight,
                                                                 double eps,
                                                                 const c10::optional<torch::Tensor>& residual);

// silu(x[..., :I]) * x[..., I:] for x [..., 2I].
torch::Tensor silu_mul(const torch::Tensor& x);

}  // namespace bastion
