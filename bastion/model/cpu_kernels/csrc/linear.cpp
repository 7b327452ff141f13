// Linear layers on CPU: bfloat16 on the blocked layout (any number of rows), int8 for a few rows.
#include <omp.h>
#include <torch/extension.h>

#include <type_traits>
#include <vector>

#include "blocked.h"
#include "dot.h"
#include "linear.h"

namespace bastion {

namespace {

template <typename T>
void linear_int8_impl(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                      const c10::optional<torch::Tensor>& bias, torch::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  std::vector<float> xf(M * K);
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  for (int64_t i = 0; i < M * K; ++i) xf[i] = to_float(xp[i]);
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  T* yp = reinterpret_cast<T*>(y.data_ptr());
  // bfloat16 activations as int16 rows on vpdpwssd (dot.h); float32 activations stay float32
  // (int16 is finer than bfloat16, not than float32)
  constexpr bool kInt16 = BASTION_VNNI && std::is_same<T, bf16_t>::value;
  const int64_t padded = (K + kQBlock - 1) / kQBlock * kQBlock, blocks = padded / kQBlock;
  std::vector<int16_t> xq(kInt16 ? M * padded : 0);
  std::vector<float> xs(kInt16 ? M * blocks : 0);
  std::vector<Int16Row> rows;
  for (int64_t m = 0; kInt16 && m < M; ++m) {
    quantize_row(xf.data() + m * K, K, xq.data() + m * padded, xs.data() + m * blocks);
    rows.push_back({xq.data() + m * padded, xs.data() + m * blocks});
  }
#pragma omp parallel
  {
    int64_t n0, n1;
    thread_rows(N, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
    const int64_t chunk = 64;
    float acc[16 * 64];
    for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
      const int64_t c1 = c0 + chunk < n1 ? c0 + chunk : n1;
      for (int64_t m0 = 0; m0 < M; m0 += 16) {
        const int64_t count = M - m0 < 16 ? M - m0 : 16;
        if (kInt16) {
          for (int64_t m = 0; m < count; ++m) rows_product_int16(qp, K, rows[m0 + m], c0, c1, acc + m * chunk);
        } else {
          rows_product<int8_t, float>(qp, K, xf.data() + m0 * K, count, c0, c1, acc, chunk);
        }
        for (int64_t m = 0; m < count; ++m)
          for (int64_t n = c0; n < c1; ++n)
            store(yp + (m0 + m) * N + n, acc[m * chunk + (n - c0)] * sp[n] + (bp ? bp[n] : 0.f));
      }
    }
  }
}

}  // namespace

torch::Tensor linear_int8(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && x.size(1) == q.size(1), "linear_int8: x [M, K] and q [N, K]");
  TORCH_CHECK(q.scalar_type() == torch::kChar && q.is_contiguous() && x.is_contiguous(),
              "linear_int8: contiguous int8 q and contiguous x");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat && scale.numel() == q.size(0) && scale.is_contiguous(),
              "linear_int8: scale is float32 [N]");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == torch::kFloat && bias->numel() == q.size(0)),
              "linear_int8: bias is float32 [N]");
  auto y = torch::empty({x.size(0), q.size(0)}, x.options());
  if (x.scalar_type() == torch::kBFloat16) linear_int8_impl<bf16_t>(x, q, scale, bias, y);
  else if (x.scalar_type() == torch::kFloat) linear_int8_impl<float>(x, q, scale, bias, y);
  else TORCH_CHECK(false, "linear_int8: x in bfloat16 or float32");
  return y;
}

torch::Tensor linear_blocked(const torch::Tensor& x, const torch::Tensor& packed, int64_t out_features,
                             const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kBFloat16,
              "linear_blocked: x is contiguous bfloat16 [M, K]");
  const int64_t M = x.size(0), K = x.size(1), N = out_features;
  TORCH_CHECK(packed.scalar_type() == torch::kBFloat16 && packed.is_contiguous() && packed.dim() == 4 &&
                  packed.size(0) == (N + kBlockCols - 1) / kBlockCols && packed.size(1) * 2 == K &&
                  packed.size(2) == kBlockCols && packed.size(3) == 2,
              "linear_blocked: weight is bfloat16 [ceil(N / 16), K / 2, 16, 2] for x [M, K]");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == torch::kFloat && bias->numel() == N),
              "linear_blocked: bias is float32 [N]");
  auto y = torch::empty({M, N}, x.options());
  const bf16_t* wp = reinterpret_cast<const bf16_t*>(packed.data_ptr());
  const bf16_t* xp = reinterpret_cast<const bf16_t*>(x.data_ptr());
  bf16_t* yp = reinterpret_cast<bf16_t*>(y.data_ptr());
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
#pragma omp parallel
  {
    int64_t b0, b1;
    thread_blocks(packed.size(0), omp_get_thread_num(), omp_get_num_threads(), &b0, &b1);
    blocked_product(wp, N, K, xp, M, b0, b1,
                    [&](int64_t m0, int rows, int64_t col0, int64_t cols, const float* tile, int64_t ldt) {
                      for (int m = 0; m < rows; ++m)
                        for (int64_t c = 0; c < cols; ++c)
                          store(yp + (m0 + m) * N + col0 + c, tile[m * ldt + c] + (bp ? bp[col0 + c] : 0.f));
                    });
  }
  return y;
}

}  // namespace bastion
