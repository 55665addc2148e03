// Scalar math the fused kernels vectorise: float exp/log as Cephes-style polynomials (plain
// mul/add, branch free, so `#pragma omp simd` loops vectorise them without libmvec or
// -ffast-math), and the bit-level conversions of bfloat16/float16 logits to float32.
//
// Accuracy: exp_f and log_f are within about 1-2 ulp of the correctly rounded value, like
// the SLEEF u10 routines PyTorch uses; the two are not bit-identical, which is why scores
// are compared with a tolerance (1e-5 relative, 1e-6 absolute) and not bit for bit.
#pragma once
#include "common/mix32.h"
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace cbda {
namespace math {

inline float as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t as_u32(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// exp(x) for x <= 0 (softmax arguments x - max). Below -87.3 the result is clamped to about
// 1e-38 instead of flushing to denormals/zero: its contribution to any sum over classes is
// far below a float32 ulp of the sum.
inline float exp_f(float x) {
  // selects without arithmetic in their arms, so they if-convert under -ftrapping-math and
  // the loops calling this vectorise
  x = x < -87.3f ? -87.3f : x;
  float fx = x * 1.44269504088896341f + 0.5f;
  const float n = __builtin_floorf(fx);
  x = x - n * 0.693359375f;
  x = x - n * -2.12194440e-4f;
  const float z = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  return y * as_float(static_cast<uint32_t>((int32_t)n + 127) << 23);
}

// ln(x) for normal positive x (the kernels only take ln(p + 1e-6) and ln(q + 1e-6)).
inline float log_f(float x) {
  const uint32_t bits = as_u32(x);
  float e = (float)((int32_t)((bits >> 23) & 0xff) - 126);
  float m = as_float((bits & 0x007fffffu) | 0x3f000000u);  // x = m 2^e, m in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = e - (small ? 1.0f : 0.0f);
  m = (m - 1.0f) + (small ? m : 0.0f);  // 2m - 1 or m - 1, both exact
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  float r = m + y;
  return r + e * 0.693359375f;
}

// 1 for NaN or +inf (errors), 0 otherwise (-inf is a masked class). Compare-only, so the
// calling loops vectorise.
inline int nan_or_pinf(float v) { return (v != v) | (v > 3.402823466e38f); }

// ATen's blend fma(a, wa, b·wb), except that a tap of weight 0 contributes nothing: then a
// -inf (masked class) of weight 0 stays out (0·-inf would be NaN). Finite inputs give the
// same value (fma(a, wa, b·0) = a·wa and fma(a, 0, b·1) = b up to the sign of a zero). The
// arms are computed first and selected without arithmetic, so the loops if-convert.
inline float lerp_skip0(float a, float wa, float b, float wb) {
  const float only_a = a * wa;
  const float only_b = b * wb;
  const float both = std::fma(a, wa, only_b);
  const float r = wa == 0.0f ? only_b : both;
  return wb == 0.0f ? only_a : r;
}

inline float bf16_to_f32(uint16_t h) { return as_float(static_cast<uint32_t>(h) << 16); }

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t ex = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (ex == 0x1f) return as_float(sign | 0x7f800000u | (man << 13));
  if (ex == 0) {  // zero or subnormal: man * 2^-24 is exact in float32
    const float f = (float)man * 5.9604644775390625e-8f;
    return sign ? -f : f;
  }
  return as_float(sign | ((ex + 112u) << 23) | (man << 13));
}

}  // namespace math

}  // namespace cbda
