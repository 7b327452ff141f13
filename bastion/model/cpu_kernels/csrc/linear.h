// Linear layers for a few rows of x (decode batches), weights streamed once per call.
#pragma once

#include <torch/extension.h>

namespace bastion {

// y = x W^T (+ bias), x and W in one dtype (bfloat16 or float32), bias float32 [N].
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias);

// y = (x q^T) * scale (+ bias), q int8 [N, K], scale and bias float32 [N], x bfloat16 or float32.
torch::Tensor linear_int8(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& bias);

}  // namespace bastion
