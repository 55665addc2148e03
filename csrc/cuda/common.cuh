// Device helpers shared by the CUDA kernels of cbda._cuda: dtype loads, the bilinear tap
// (PyTorch's align_corners=True arithmetic), per-pixel softmax statistics, the orderable
// 64-bit candidate key and the seeded hash. No torch headers (docs/architecture.md).
#pragma once

#include "common/mix32.h"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"
#include "tile_math.h"

namespace cbda {
namespace cuda {

constexpr float kLogEps = 1e-6f;  // RIPU's eps inside every ln(p + eps)

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ float load_f(const T* p) { return to_f(__ldg(p)); }

// ---- bilinear upsampling, align_corners=True -------------------------------------------
// Mirrors PyTorch's upsample_bilinear2d CUDA kernel so that pseudo labels (argmax of the
// upsampled logits) agree bit for bit with the reference run on the same GPU: source
// coordinate = scale * dst in float, scale = float(in - 1) / (out - 1), weights
// lambda1 = src - floor, lambda0 = 1 - lambda1, and the value
//   h0l * (w0l * a + w1l * b) + h1l * (w0l * c + w1l * d)
// written with explicit fma/mul so that every kernel here (fused pass, plain scores,
// labels at picks) rounds identically whatever the compiler's contraction choices; the
// fma placement is the one nvcc's contraction gives the plain expression.
struct Tap {
  int64_t o00, o01, o10, o11;  // element offsets inside one channel plane
  float h0l, h1l, w0l, w1l;
};

__device__ __forceinline__ Tap make_tap(int64_t y, int64_t x, int64_t h, int64_t w, float rh, float rw) {
  // one definition of the arithmetic for every kernel (tile_math.h: axis_tap, blend)
  const tile::AxisTap ty = tile::axis_tap(static_cast<int>(y), static_cast<int>(h), rh);
  const tile::AxisTap tx = tile::axis_tap(static_cast<int>(x), static_cast<int>(w), rw);
  Tap t;
  t.h0l = ty.l0;
  t.h1l = ty.l1;
  t.w0l = tx.l0;
  t.w1l = tx.l1;
  t.o00 = static_cast<int64_t>(ty.lo) * w + tx.lo;
  t.o01 = t.o00 + tx.step;
  t.o10 = t.o00 + static_cast<int64_t>(ty.step) * w;
  t.o11 = t.o10 + tx.step;
  return t;
}

using tile::blend;

// NaN or +inf: the logits errors (-inf is a masked class)
__device__ __forceinline__ bool nan_or_pinf(float v) { return !(v <= 3.402823466e38f) && !(v == -INFINITY); }

template <typename T>
__device__ __forceinline__ float tap_value(const T* __restrict__ plane, const Tap& t) {
  const float a = load_f(plane + t.o00), b = load_f(plane + t.o01);
  const float c = load_f(plane + t.o10), d = load_f(plane + t.o11);
  const float top = blend(t.w0l, a, t.w1l, b);
  const float bot = blend(t.w0l, c, t.w1l, d);
  return blend(t.h0l, top, t.h1l, bot);
}

// The same value, and `bad` set when it is NaN or +inf: a NaN/+inf tap of positive weight
// makes it so. Every source pixel has a positive weight at some output pixel when the
// output is at least as large as the logits (align_corners=True), so every logit is
// checked somewhere; checking the blended value, not the four taps, keeps the tile kernel
// within its register budget (the per-tap test spilled 8 bytes at r = 1 on sm_90).
template <typename T>
__device__ __forceinline__ float tap_value(const T* __restrict__ plane, const Tap& t, bool& bad) {
  const float v = tap_value(plane, t);
  bad |= nan_or_pinf(v);
  return v;
}

// ---- per-pixel statistics of the softmax ------------------------------------------------
struct PixelStats {
  int label;      // argmax, lowest class on ties
  bool bad;       // a NaN/+inf tap, or every class -inf (no softmax): the logits error
  float ent;      // -sum p ln(p + eps), unnormalised
  float p1, p2;   // largest and second largest probability
};

// Values of the C classes at one output pixel. CMAX > 0 keeps them in registers (loops are
// unrolled, so the array is indexed with constants only); CMAX == 0 recomputes the tap on
// every pass (any C; the low-res logits stay in L1/L2 across the three passes).
template <typename T, int CMAX>
__device__ __forceinline__ PixelStats pixel_stats(const T* __restrict__ img, int64_t plane, int C,
                                                  const Tap& tap, bool need_softmax) {
  PixelStats s;
  if constexpr (CMAX > 0) {
    float v[CMAX];
    bool bad = false;
#pragma unroll
    for (int c = 0; c < CMAX; ++c) v[c] = (c < C) ? tap_value(img + c * plane, tap, bad) : 0.0f;
    float m = v[0], m2 = -INFINITY;
    int lab = 0;
#pragma unroll
    for (int c = 1; c < CMAX; ++c) {
      if (c < C) {
        if (v[c] > m) { m2 = m; m = v[c]; lab = c; }
        else if (v[c] > m2) { m2 = v[c]; }
      }
    }
    s.label = lab;
    s.bad = bad || m == -INFINITY;
    if (!need_softmax) { s.ent = 0.f; s.p1 = s.p2 = 0.f; return s; }
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < CMAX; ++c) if (c < C) sum += expf(v[c] - m);
    float ent = 0.f;
#pragma unroll
    for (int c = 0; c < CMAX; ++c) {
      if (c < C) {
        const float p = expf(v[c] - m) / sum;
        ent += p * logf(p + kLogEps);
      }
    }
    s.ent = -ent;
    s.p1 = 1.0f / sum;  // exp(0) / sum, as softmax gives the argmax class
    s.p2 = expf(m2 - m) / sum;
  } else {
    bool bad = false;
    float m = tap_value(img, tap, bad), m2 = -INFINITY;
    int lab = 0;
    for (int c = 1; c < C; ++c) {
      const float x = tap_value(img + c * plane, tap, bad);
      if (x > m) { m2 = m; m = x; lab = c; }
      else if (x > m2) { m2 = x; }
    }
    s.label = lab;
    s.bad = bad || m == -INFINITY;
    if (!need_softmax) { s.ent = 0.f; s.p1 = s.p2 = 0.f; return s; }
    float sum = 0.f;
    for (int c = 0; c < C; ++c) sum += expf(tap_value(img + c * plane, tap) - m);
    float ent = 0.f;
    for (int c = 0; c < C; ++c) {
      const float p = expf(tap_value(img + c * plane, tap) - m) / sum;
      ent += p * logf(p + kLogEps);
    }
    s.ent = -ent;
    s.p1 = 1.0f / sum;
    s.p2 = expf(m2 - m) / sum;
  }
  return s;
}

// ---- seeded random heuristic: the mix32 chain of cbda.scores.random_scores ---------------

// seed_hash = mix32(seed mod 2^32), computed once on the host.
__device__ __forceinline__ float random_score(uint32_t seed_hash, int64_t image_id, int64_t pix) {
  const uint64_t id = static_cast<uint64_t>(image_id);
  uint32_t h = mix32(static_cast<uint32_t>(id >> 32) ^ seed_hash);
  h = mix32(static_cast<uint32_t>(id & 0xFFFFFFFFull) ^ h);
  h = mix32(static_cast<uint32_t>(static_cast<uint64_t>(pix) & 0xFFFFFFFFull) ^ h);
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

// ---- orderable keys -----------------------------------------------------------------------
// Monotone map float -> uint32 (ascending). -0.0 is folded onto +0.0 first, so the two
// compare equal as the spec requires.
__host__ __device__ __forceinline__ uint32_t order_bits(float f) {
  uint32_t u;
#ifdef __CUDA_ARCH__
  u = __float_as_uint(f);
#else
  __builtin_memcpy(&u, &f, 4);
#endif
  if ((u << 1) == 0u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__host__ __device__ __forceinline__ float from_order_bits(uint32_t u) {
  const uint32_t b = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
#ifdef __CUDA_ARCH__
  return __uint_as_float(b);
#else
  float f;
  __builtin_memcpy(&f, &b, 4);
  return f;
#endif
}

// Candidate key of one batch call, sorted ascending:
//   [ slot | ~order_bits(score) | pix ]  with pix in the low `pixbits` bits,
// i.e. grouped by batch slot, then score descending, then pixel (= global index) ascending.
__device__ __forceinline__ uint64_t candidate_key(int64_t slot, float score, int64_t pix, int pixbits) {
  return (static_cast<uint64_t>(slot) << (32 + pixbits)) |
         (static_cast<uint64_t>(~order_bits(score)) << pixbits) | static_cast<uint64_t>(pix);
}

// True when (score, gidx) comes before the cut-off in the order (score desc, gidx asc).
__device__ __forceinline__ bool beats(float score, int64_t gidx, const Cutoff& cut) {
  if (!cut.active) return true;
  return score > cut.score || (score == cut.score && gidx < cut.gidx);
}

// The cut-off of a select pass, read once per thread: device scalars that the selection
// kernels raise between batches; no pointers = no cut-off.
__device__ __forceinline__ Cutoff load_cutoff(const SelectArgs& s) {
  Cutoff c;
  c.active = s.cut_score != nullptr;
  c.score = c.active ? *s.cut_score : 0.0f;
  c.gidx = c.active ? *s.cut_gidx : 0;
  return c;
}

// The cut-off test of one image's pixels with 32-bit pixel indices (pix = y*W + x of image
// `image_id`, global index gbase + pix): beats(score, gbase + pix, cut) ==
// beats(score, pix, pix_cutoff(cut, gbase)) for every score but NaN.
struct PixCutoff {
  float score;
  int lim;  // pixels below lim win a tie
};

__device__ __forceinline__ PixCutoff pix_cutoff(const Cutoff& cut, int64_t gbase) {
  if (!cut.active) return PixCutoff{-INFINITY, 0x7FFFFFFF};
  const int64_t d = cut.gidx - gbase;
  return PixCutoff{cut.score, d <= 0 ? 0 : (d >= 0x7FFFFFFF ? 0x7FFFFFFF : static_cast<int>(d))};
}

__device__ __forceinline__ bool beats(float score, int pix, const PixCutoff& c) {
  return (score > c.score) | ((score == c.score) & (pix < c.lim));  // no branch
}

__device__ __forceinline__ unsigned lanemask_lt() {
  unsigned m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

// Warp-aggregated append: every lane of the (full) warp calls this; lanes with `take` get
// consecutive slots of `buf` after one atomicAdd by the first active lane. The per-slot
// counter gets the same total. Returns the index or -1.
__device__ __forceinline__ int64_t warp_append(bool take, unsigned long long* total,
                                               unsigned long long* slot_total) {
  const unsigned mask = __ballot_sync(0xFFFFFFFFu, take);
  if (mask == 0u) return -1;
  const int lane = threadIdx.x & 31;
  const int leader = __ffs(mask) - 1;
  unsigned long long base = 0;
  if (lane == leader) {
    base = atomicAdd(total, static_cast<unsigned long long>(__popc(mask)));
    if (slot_total != nullptr) atomicAdd(slot_total, static_cast<unsigned long long>(__popc(mask)));
  }
  base = __shfl_sync(0xFFFFFFFFu, base, leader);
  if (!take) return -1;
  return static_cast<int64_t>(base + __popc(mask & lanemask_lt()));
}

// Warp-wide reservation of n consecutive slots per lane (any n >= 0; every lane of the full
// warp calls this): an inclusive scan of n over the lanes, one atomicAdd of the warp's total
// by the last lane (and on the per-slot counter). Returns this lane's first index.
__device__ __forceinline__ int64_t warp_reserve(int n, unsigned long long* total, unsigned long long* slot_total) {
  const int lane = threadIdx.x & 31;
  int incl = n;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int v = __shfl_up_sync(0xFFFFFFFFu, incl, d);
    if (lane >= d) incl += v;
  }
  unsigned long long base = 0;
  if (lane == 31 && incl > 0) {
    base = atomicAdd(total, static_cast<unsigned long long>(incl));
    if (slot_total != nullptr) atomicAdd(slot_total, static_cast<unsigned long long>(incl));
  }
  base = __shfl_sync(0xFFFFFFFFu, base, 31);
  return static_cast<int64_t>(base) + incl - n;
}

}  // namespace cuda
}  // namespace cbda
