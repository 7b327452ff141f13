// The small ops of a layer that eager torch runs as many kernels each: RMSNorm with the residual
// add before it, and SiLU(gate) * up. One pass over the rows, split between the threads; the
// roundings are eager torch's (and transformers'), so a model computes what it computed before:
// the sum rounded to the dtype, the normed row rounded before the weight multiplies it, SiLU
// rounded before the product.
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "dot.h"
#include "elementwise.h"

namespace bastion {

namespace {

constexpr int64_t kParallelFrom = 1 << 14;  // values below which one thread does it all

inline float bits_to_float(uint32_t u) { return __builtin_bit_cast(float, u); }
inline uint32_t float_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }

// n values into float32 (loops the compiler vectorizes: bfloat16 is the high half of a float)
inline void widen(const bf16_t* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = bits_to_float(static_cast<uint32_t>(src[i]) << 16);
}
inline void widen(const float* src, float* dst, int64_t n) { std::copy(src, src + n, dst); }

// n float32 values rounded into T (to nearest even, as torch rounds; values here are finite)
inline void narrow(const float* src, bf16_t* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = float_to_bits(src[i]);
    dst[i] = static_cast<bf16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}
inline void narrow(const float* src, float* dst, int64_t n) { std::copy(src, src + n, dst); }

// the values as T holds them: rounded to T and back
template <typename T>
inline void round_to(float* v, int64_t n) {
  if constexpr (std::is_same<T, bf16_t>::value) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = float_to_bits(v[i]);
      v[i] = bits_to_float(((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) << 16);
    }
  }
}

template <typename T, typename W>
void rms_norm_rows(const T* x, const T* residual, const W* weight, int64_t rows, int64_t n, float eps, T* out,
                   T* sum) {
#pragma omp parallel if (rows * n >= kParallelFrom)
  {
    std::vector<float> v(n), r(n), w(n);
    widen(weight, w.data(), n);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      widen(x + row * n, v.data(), n);
      if (sum) {
        widen(residual + row * n, r.data(), n);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) v[i] += r[i];
        round_to<T>(v.data(), n);
        narrow(v.data(), sum + row * n, n);
      }
      float sq = 0.f;
#pragma omp simd reduction(+ : sq)
      for (int64_t i = 0; i < n; ++i) sq += v[i] * v[i];
      const float inv = 1.0f / std::sqrt(sq / n + eps);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) v[i] *= inv;
      round_to<T>(v.data(), n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) v[i] *= w[i];
      narrow(v.data(), out + row * n, n);
    }
  }
}

template <typename T>
void silu_mul_rows(const T* x, int64_t rows, int64_t half, T* out) {
#pragma omp parallel if (rows * half >= kParallelFrom)
  {
    std::vector<float> g(half), u(half);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      widen(x + row * 2 * half, g.data(), half);
      widen(x + row * 2 * half + half, u.data(), half);
      int64_t done = 0;
#if defined(__AVX512F__)
      for (; done + 16 <= half; done += 16) {
        const __m512 gv = _mm512_loadu_ps(g.data() + done);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        _mm512_storeu_ps(g.data() + done, _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e)));
      }
#endif
      for (int64_t i = done; i < half; ++i) g[i] = g[i] / (1.f + exp_approx(-g[i]));
      round_to<T>(g.data(), half);
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) g[i] *= u[i];
      narrow(g.data(), out + row * half, half);
    }
  }
}

template <typename T>
const T* ptr(const torch::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }
template <typename T>
T* mut(torch::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

}  // namespace

std::tuple<torch::Tensor, c10::optional<torch::Tensor>> rms_norm(const torch::Tensor& x, const torch::Tensor& weight,
                                                                 double eps,
                                                                 const c10::optional<torch::Tensor>& residual) {
  TORCH_CHECK(x.is_contiguous() && x.dim() >= 1 && (x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kFloat),
              "rms_norm: x is contiguous bfloat16 or float32");
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == n &&
                  (weight.scalar_type() == x.scalar_type() || weight.scalar_type() == torch::kFloat),
              "rms_norm: weight [N] in x's dtype or float32");
  TORCH_CHECK(!residual.has_value() || (residual->is_contiguous() && residual->sizes() == x.sizes() &&
                                        residual->scalar_type() == x.scalar_type()),
              "rms_norm: residual like x");
  auto out = torch::empty_like(x);
  c10::optional<torch::Tensor> sum;
  if (residual.has_value()) sum = torch::empty_like(x);
  const float e = static_cast<float>(eps);
  if (x.scalar_type() == torch::kBFloat16) {
    const bf16_t* res = residual.has_value() ? ptr<bf16_t>(*residual) : nullptr;
    bf16_t* s = sum.has_value() ? mut<bf16_t>(*sum) : nullptr;
    if (weight.scalar_type() == torch::kFloat)
      rms_norm_rows<bf16_t, float>(ptr<bf16_t>(x), res, ptr<float>(weight), rows, n, e, mut<bf16_t>(out), s);
    else
      rms_norm_rows<bf16_t, bf16_t>(ptr<bf16_t>(x), res, ptr<bf16_t>(weight), rows, n, e, mut<bf16_t>(out), s);
  } else {
    TORCH_CHECK(weight.scalar_type() == torch::kFloat, "rms_norm: a float32 x takes a float32 weight");
    rms_norm_rows<float, float>(ptr<float>(x), residual.has_value() ? ptr<float>(*residual) : nullptr,
                                ptr<float>(weight), rows, n, e, mut<float>(out),
                                sum.has_value() ? mut<float>(*sum) : nullptr);
  }
  return {out, sum};
}

torch::Tensor silu_mul(const torch::Tensor& x) {
  TORCH_CHECK(x.is_contiguous() && x.dim() >= 1 && x.size(-1) % 2 == 0 &&
                  (x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kFloat),
              "silu_mul: x is contiguous bfloat16 or float32 [..., 2I]");
  const int64_t half = x.size(-1) / 2, rows = half ? x.numel() / (2 * half) : 0;
  auto sizes = x.sizes().vec();
  sizes.back() = half;
  auto out = torch::empty(sizes, x.options());
  if (x.scalar_type() == torch::kBFloat16)
    silu_mul_rows<bf16_t>(ptr<bf16_t>(x), rows, half, mut<bf16_t>(out));
  else
    silu_mul_rows<float>(ptr<float>(x), rows, half, mut<float>(out));
  return out;
}

}  // namespace bastion
