// Dot products of a few weight rows with a few activation rows: the inner loop of every
// matrix product in this extension. Weights are row-major [N, K]; activations [M, K].
//
// bfloat16: with AVX512-BF16 the products run on `vdpbf16ps` (32 pairs per instruction);
// without it the same loop widens to float32 and the compiler vectorizes it (`omp simd`).
// float32: plain loops the compiler vectorizes for the machine it builds on (-march=native).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
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
  return p * __builtin_bit_cast(float, bits);  // NOTE: not memcpy: loops of it vectorize
}

#if defined(__AVX512F__)
// e^x for 16 floats (the polynomial of exp_approx)
inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

#endif

inline float to_float(int8_t v) { return static_cast<float>(v); }

// out[m * ldo + n] = dot(w row n, x row m) for n < NR, m < MR: plain loops the compiler
// vectorizes (float32 weights everywhere, int8 weights where AVX-512 is missing).
template <int NR, int MR, typename W>
inline void dot_tile_loops(const W* w, int64_t ldw, const float* x, int64_t ldx, int64_t K,
                           float* out, int64_t ldo) {
  for (int n = 0; n < NR; ++n) {
    for (int m = 0; m < MR; ++m) {
      const W* wr = w + n * ldw;
      const float* xr = x + m * ldx;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < K; ++k) s += to_float(wr[k]) * xr[k];
      out[m * ldo + n] = s;
    }
  }
}

template <int NR, int MR>
inline void dot_tile(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t K,
                     float* out, int64_t ldo) {
  dot_tile_loops<NR, MR>(w, ldw, x, ldx, K, out, ldo);
}

// int8 weights (one scale per row, applied by the caller) times float32 activations.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
template <int NR, int MR>
inline void dot_tile(const int8_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t K,
                     float* out, int64_t ldo) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[NR];
    for (int n = 0; n < NR; ++n)
      wv[n] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w + n * ldw + k))));
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(wv[n], xv, acc[m][n]);
    }
  }
  if (k < K) {  // the last K % 16 columns, masked
    const __mmask16 mask = (__mmask16)((1u << (K - k)) - 1);
    __m512 wv[NR];
    for (int n = 0; n < NR; ++n)
      wv[n] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, w + n * ldw + k)));
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * ldx + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(wv[n], xv, acc[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) out[m * ldo + n] = _mm512_reduce_add_ps(acc[m][n]);
}
#else
template <int NR, int MR>
inline void dot_tile(const int8_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t K,
                     float* out, int64_t ldo) {
  dot_tile_loops<NR, MR>(w, ldw, x, ldx, K, out, ldo);
}
#endif

// With AVX512-VNNI an int8 product runs on `vpdpwssd` (32 int16 multiply-adds per
// instruction): the weight row widens to int16 and the activation row is held as int16 in
// blocks of 64 with a float scale per block. The int16 rounding (half a step of 1/32767 of the
// block's largest value) is far below the bfloat16 rounding the activations already carry, so
// the product is still weight-only int8 (activations are not quantized to 8 bits).
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define BASTION_VNNI 1
#else
#define BASTION_VNNI 0
#endif

constexpr int64_t kQBlock = 64;

struct Int16Row {
  const int16_t* q;     // [K rounded up to 64], zero padded
  const float* scale;   // one per block of 64
};

// x [K] as int16 q [ceil(K / 64) * 64] and scale [ceil(K / 64)].
inline void quantize_row(const float* x, int64_t K, int16_t* q, float* scale) {
  for (int64_t b = 0; b * kQBlock < K; ++b) {
    const int64_t k0 = b * kQBlock, k1 = k0 + kQBlock < K ? k0 + kQBlock : K;
    float top = 0.f;
    for (int64_t k = k0; k < k1; ++k) top = x[k] > top ? x[k] : (-x[k] > top ? -x[k] : top);
    const float inv = top > 0.f ? 32767.f / top : 0.f;
    for (int64_t k = k0; k < k0 + kQBlock; ++k)
      q[k] = k < k1 ? static_cast<int16_t>(__builtin_nearbyintf(x[k] * inv)) : 0;
    scale[b] = top / 32767.f;
  }
}

#if BASTION_VNNI
// out[n] = dot(w row n, x) for n < NR (w int8; row scales applied by the caller).
template <int NR>
inline void dot_rows_int16(const int8_t* w, int64_t ldw, const Int16Row& x, int64_t K, float* out) {
  __m512 acc[NR];
  for (int n = 0; n < NR; ++n) acc[n] = _mm512_setzero_ps();
  auto block = [&](int64_t k, const __m256i* lo, const __m256i* hi) {
    const __m512i x0 = _mm512_loadu_si512(x.q + k), x1 = _mm512_loadu_si512(x.q + k + 32);
    const __m512 sv = _mm512_set1_ps(x.scale[k / kQBlock]);
    for (int n = 0; n < NR; ++n) {
      __m512i d = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_cvtepi8_epi16(lo[n]), x0);
      d = _mm512_dpwssd_epi32(d, _mm512_cvtepi8_epi16(hi[n]), x1);
      acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sv, acc[n]);
    }
  };
  __m256i lo[NR], hi[NR];
  int64_t k = 0;
  for (; k + kQBlock <= K; k += kQBlock) {
    for (int n = 0; n < NR; ++n) {
      lo[n] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + n * ldw + k));
      hi[n] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + n * ldw + k + 32));
    }
    block(k, lo, hi);
  }
  if (k < K) {  // the last K % 64 columns: masked-off weights meet zero-padded activations
    const int64_t left = K - k;
    const __mmask32 m0 = left >= 32 ? ~0u : (1u << left) - 1;
    const __mmask32 m1 = left > 32 ? (1u << (left - 32)) - 1 : 0u;
    for (int n = 0; n < NR; ++n) {
      lo[n] = _mm256_maskz_loadu_epi8(m0, w + n * ldw + k);
      hi[n] = _mm256_maskz_loadu_epi8(m1, w + n * ldw + k + 32);
    }
    block(k, lo, hi);
  }
  for (int n = 0; n < NR; ++n) out[n] = _mm512_reduce_add_ps(acc[n]);
}

// Rows [n0, n1) of int8 W times x: y[n - n0] (unscaled).
inline void rows_product_int16(const int8_t* w, int64_t K, const Int16Row& x, int64_t n0, int64_t n1, float* y) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) dot_rows_int16<4>(w + n * K, K, x, K, y + (n - n0));
  for (; n < n1; ++n) dot_rows_int16<1>(w + n * K, K, x, K, y + (n - n0));
}
#else
// Never called: callers take this path only when BASTION_VNNI is set.
inline void rows_product_int16(const int8_t*, int64_t, const Int16Row&, int64_t, int64_t, float*) {}
#endif

// Rows [n0, n1) of W times all M activation rows (M small): float32 results y[m * ldy + n - n0]
// (y points at column n0). Weight rows go four at a time, activation rows four at a time: each 4-row weight
// block is read from memory once and from L1 for the other activation rows.
template <typename T, typename X = T>
void rows_product(const T* w, int64_t K, const X* x, int64_t M, int64_t n0, int64_t n1,
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
