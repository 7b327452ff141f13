// `linear`: y = x W^T (+ b) for a few rows of x, weights streamed once per call.
#include <omp.h>
#include <torch/extension.h>

#include "dot.h"

namespace bastion {

namespace {

template <typename T>
void linear_impl(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias,
                 torch::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const T* wp = reinterpret_cast<const T*>(w.data_ptr());
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  T* yp = reinterpret_cast<T*>(y.data_ptr());
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
#pragma omp parallel
  {
    int64_t n0, n1;
    thread_rows(N, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
    const int64_t chunk = 64;  // output columns per pass: float32 partials stay in L1
    float acc[16 * 64];
    for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
      const int64_t c1 = c0 + chunk < n1 ? c0 + chunk : n1;
      for (int64_t m0 = 0; m0 < M; m0 += 16) {
        const int64_t rows = M - m0 < 16 ? M - m0 : 16;
        rows_product<T>(wp, K, xp + m0 * K, rows, c0, c1, acc, chunk);
        for (int64_t m = 0; m < rows; ++m)
          for (int64_t n = c0; n < c1; ++n)
            store(yp + (m0 + m) * N + n, acc[m * chunk + (n - c0)] + (bp ? bp[n] : 0.f));
      }
    }
  }
}

}  // namespace

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear: x [M, K] and w [N, K]");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "linear: x and w must have one dtype");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "linear: contiguous x and w");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == torch::kFloat && bias->numel() == w.size(0)),
              "linear: bias is float32 [N]");
  auto y = torch::empty({x.size(0), w.size(0)}, x.options());
  if (x.scalar_type() == torch::kBFloat16) linear_impl<bf16_t>(x, w, bias, y);
  else if (x.scalar_type() == torch::kFloat) linear_impl<float>(x, w, bias, y);
  else TORCH_CHECK(false, "linear: bfloat16 or float32 only");
  return y;
}

}  // namespace bastion
