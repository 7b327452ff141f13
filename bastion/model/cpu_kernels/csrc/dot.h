// Dot products of a few weight rows with a few activation rows: the inner loop of every
// matrix product in this extension. Weights are row-major [N, K]; activations [M, K].
//
// bfloat16: with AVX512-BF16 the products run on `vdpbf16ps` (32 pairs per instruction);
// without it the same loop widens to float32 and the compiler vectorizes it (`omp simd`).
// float32: plain loops the compiler vectorizes for the machine it builds on (-march=native).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define BASTION_DPBF16 1
#else
#define BASTION_DPBF16 0
#endif

namespace bastion {

using bf16_t = uint16_t;

inline float bf16_to_float(bf16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as torch's `.to(torch.bfloat16)` does; NaN stays NaN.
inline bf16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<bf16_t>(u >> 16);
}

inline float to_float(float v) { return v; }
inline float to_float(bf16_t v) { return bf16_to_float(v); }
inline void store(float* p, float v) { *p = v; }
inline void store(bf16_t* p, float v) { *p = float_to_bf16(v); }

// e^x to about one ulp (Cephes' expf): plain arithmetic, so `omp simd` loops vectorize it
// (the C library's expf is a call per element).
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// out[m * ldo + n] = dot(w row n, x row m) for n < NR, m < MR.
template <int NR, int MR>
inline void dot_tile(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t K,
                     float* out, int64_t ldo) {
  for (int n = 0; n < NR; ++n) {
    for (int m = 0; m < MR; ++m) {
      const float* wr = w + n * ldw;
      const float* xr = x + m * ldx;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < K; ++k) s += wr[k] * xr[k];
      out[m * ldo + n] = s;
    }
  }
}

#if BASTION_DPBF16
template <int NR, int MR>
inline void dot_tile(const bf16_t* w, int64_t ldw, const bf16_t* x, int64_t ldx, int64_t K,
                     float* out, int64_t ldo) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[NR];
    for (int n = 0; n < NR; ++n) wv[n] = (__m512bh)_mm512_loadu_si512(w + n * ldw + k);
    for (int m = 0; m < MR; ++m) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], wv[n], xv);
    }
  }
  if (k < K) {  // the last K % 32 columns, masked
    __mmask32 mask = (__mmask32)((1ull << (K - k)) - 1);
    __m512bh wv[NR];
    for (int n = 0; n < NR; ++n) wv[n] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + n * ldw + k);
    for (int m = 0; m < MR; ++m) {
      __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * ldx + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], wv[n], xv);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) out[m * ldo + n] = _mm512_reduce_add_ps(acc[m][n]);
}
#else
template <int NR, int MR>
inline void dot_tile(const bf16_t* w, int64_t ldw, const bf16_t* x, int64_t ldx, int64_t K,
                     float* out, int64_t ldo) {
  for (int n = 0; n < NR; ++n) {
    for (int m = 0; m < MR; ++m) {
      const bf16_t* wr = w + n * ldw;
      const bf16_t* xr = x + m * ldx;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < K; ++k) s += bf16_to_float(wr[k]) * bf16_to_float(xr[k]);
      out[m * ldo + n] = s;
    }
  }
}
#endif

// Rows [n0, n1) of W times all M activation rows (M small): float32 results y[m * ldy + n - n0]
// (y points at column n0). Weight rows go four at a time, activation rows four at a time: each 4-row weight
// block is read from memory once and from L1 for the other activation rows.
template <typename T>
void rows_product(const T* w, int64_t K, const T* x, int64_t M, int64_t n0, int64_t n1,
                  float* y, int64_t ldy) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const T* wb = w + n * K;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) dot_tile<4, 4>(wb, K, x + m * K, K, K, y + m * ldy + (n - n0), ldy);
    switch (M - m) {
      case 3: dot_tile<4, 3>(wb, K, x + m * K, K, K, y + m * ldy + (n - n0), ldy); break;
      case 2: dot_tile<4, 2>(wb, K, x + m * K, K, K, y + m * ldy + (n - n0), ldy); break;
      case 1: dot_tile<4, 1>(wb, K, x + m * K, K, K, y + m * ldy + (n - n0), ldy); break;
      default: break;
    }
  }
  for (; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) dot_tile<1, 1>(w + n * K, K, x + m * K, K, K, y + m * ldy + (n - n0), ldy);
}

// This thread's share of N rows when `nthreads` split them in runs of four.
inline void thread_rows(int64_t N, int thread, int nthreads, int64_t* n0, int64_t* n1) {
  int64_t per = ((N + nthreads - 1) / nthreads + 3) / 4 * 4;
  *n0 = per * thread < N ? per * thread : N;
  *n1 = *n0 + per < N ? *n0 + per : N;
}

}  // namespace bastion
