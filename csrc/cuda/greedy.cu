// Exact per-image greedy selection with blocking (docs/semantics.md: strategy ra, and the
// per-image sequences that da merges), after candidate compaction and a radix sort.
//
// The greedy sequence of an image equals a scan of its candidates in (score desc, index asc)
// order that keeps a candidate iff no kept one lies within Chebyshev distance 2r (blocking is
// symmetric), so no "iterate local maxima" rounds are needed and smooth chains cost nothing
// extra. One warp scans one image 32 candidates at a time:
//   1. each lane tests its candidate against the image's blocked byte map (earlier rounds and
//      picks of earlier steps);
//   2. lanes compare their centre with the 32 - 1 others (shuffles) and build the mask of
//      earlier free lanes within 2r;
//   3. a warp-uniform pass over the 32 bits resolves keep/drop in order;
//   4. kept lanes write their pick and mark their (4r+1)² box; __syncwarp orders those stores
//      before the next step's loads.
// A step costs ~100 instructions for 32 candidates, and the scan stops at the quota. With a
// cut-off active (da after the first trim) the candidates are only those beating the K-th
// key; the scan over them is still exact, because whether a candidate is kept depends only
// on candidates before it, which beat the cut-off too.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

namespace cbda {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void mark_prior_kernel(const int64_t* offsets, const int64_t* ys, const int64_t* xs,
                                  const int64_t* radii, int64_t H, int64_t W, int64_t radius, uint8_t* mask) {
  const int64_t b = blockIdx.x;
  uint8_t* m = mask + b * H * W;
  for (int64_t p = offsets[b] + threadIdx.x; p < offsets[b + 1]; p += blockDim.x) {
    const int64_t d = radii[p] + radius, y = ys[p], x = xs[p];
    const int64_t ylo = y - d > 0 ? y - d : 0, yhi = y + d < H - 1 ? y + d : H - 1;
    const int64_t xlo = x - d > 0 ? x - d : 0, xhi = x + d < W - 1 ? x + d : W - 1;
    for (int64_t yy = ylo; yy <= yhi; ++yy)
      for (int64_t xx = xlo; xx <= xhi; ++xx) m[yy * W + xx] = 1;
  }
}

// One thread per pixel; blockIdx.y = batch slot, so a warp's candidates share a slot.
__global__ void compact_scores_kernel(const float* scores, const int64_t* labels, int64_t H, int64_t W,
                                      SelectArgs s) {
  const int64_t b = blockIdx.y;
  const int64_t n = H * W;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  bool take = false;
  uint64_t key = 0;
  const Cutoff cut = load_cutoff(s);
  if (pix < n && s.whole[b] == 0 && s.blocked[b * n + pix] == 0) {
    float v = scores[b * n + pix];
    if (s.weights != nullptr) v = v * s.weights[labels != nullptr ? labels[b * n + pix] : 0];
    if (beats(v, s.image_ids[b] * n + pix, cut)) {
      take = true;
      key = candidate_key(b, v, pix, s.pixbits);
    }
  }
  const int64_t at = warp_append(take, s.count, s.slot_counts + b);
  if (at >= 0 && at < s.capacity) s.keys[at] = key;
}

__global__ void __launch_bounds__(32) greedy_kernel(const uint64_t* keys, const unsigned long long* slot_counts,
                                                    int64_t H, int64_t W, int64_t radius, int pixbits,
                                                    uint8_t* mask, int64_t quota, int64_t* out_pix,
                                                    float* out_score, int64_t* out_count) {
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x;
  // this slot's segment of the sorted keys: the sum of the earlier slots' counts
  unsigned long long start = 0;
  for (int64_t i = lane; i < b; i += 32) start += slot_counts[i];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) start += __shfl_xor_sync(0xFFFFFFFFu, start, off);
  const unsigned long long end = start + slot_counts[b];

  uint8_t* m = mask + b * H * W;
  const int64_t reach = 2 * radius;
  const uint64_t pixmask = (pixbits >= 64) ? ~0ull : ((1ull << pixbits) - 1ull);
  int64_t* opix = out_pix + b * quota;
  float* oscore = out_score + b * quota;
  int64_t count = 0;

  for (unsigned long long base = start; base < end && count < quota; base += 32) {
    const unsigned long long i = base + lane;
    const bool valid = i < end;
    const uint64_t key = valid ? keys[i] : 0ull;
    const int64_t pix = static_cast<int64_t>(key & pixmask);
    const int64_t y = pix / W, x = pix - y * W;
    const bool free_ = valid && m[pix] == 0;
    const unsigned freemask = __ballot_sync(0xFFFFFFFFu, free_);
    unsigned conflict = 0u;
    if (__popc(freemask) > 1) {
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        const int64_t yj = __shfl_sync(0xFFFFFFFFu, y, j), xj = __shfl_sync(0xFFFFFFFFu, x, j);
        const int64_t dy = yj > y ? yj - y : y - yj, dx = xj > x ? xj - x : x - xj;
        if (j < lane && ((freemask >> j) & 1u) && dy <= reach && dx <= reach) conflict |= 1u << j;
      }
    }
    unsigned kept = 0u;  // warp-uniform
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const unsigned cj = __shfl_sync(0xFFFFFFFFu, conflict, j);
      if (((freemask >> j) & 1u) && (cj & kept) == 0u) kept |= 1u << j;
    }
    const int64_t room = quota - count;
    while (__popc(kept) > room) kept &= ~(1u << (31 - __clz(kept)));  // keep the first `room`
    if ((kept >> lane) & 1u) {
      const int64_t k = count + __popc(kept & lanemask_lt());
      opix[k] = pix;
      oscore[k] = from_order_bits(~static_cast<uint32_t>(key >> pixbits));
      const int64_t ylo = y - reach > 0 ? y - reach : 0, yhi = y + reach < H - 1 ? y + reach : H - 1;
      const int64_t xlo = x - reach > 0 ? x - reach : 0, xhi = x + reach < W - 1 ? x + reach : W - 1;
      for (int64_t yy = ylo; yy <= yhi; ++yy)
        for (int64_t xx = xlo; xx <= xhi; ++xx) m[yy * W + xx] = 1;
    }
    count += __popc(kept);
    __syncwarp();  // kept boxes visible to every lane before the next step reads the map
  }
  if (lane == 0) out_count[b] = count;
}

}  // namespace

cudaError_t mark_prior(const int64_t* offsets, const int64_t* ys, const int64_t* xs, const int64_t* radii,
                       int64_t B, int64_t H, int64_t W, int64_t radius, uint8_t* mask, cudaStream_t stream) {
  if (B <= 0) return cudaSuccess;
  if (offsets == nullptr || mask == nullptr || B > 0x7FFFFFFF || H <= 0 || W <= 0 || radius < 0)
    return cudaErrorInvalidValue;
  mark_prior_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(offsets, ys, xs, radii, H, W, radius, mask);
  return cudaGetLastError();
}

cudaError_t compact_scores(const float* scores, const int64_t* labels, int64_t B, int64_t H, int64_t W,
                           const SelectArgs& sel, cudaStream_t stream) {
  if (B <= 0 || H * W <= 0) return cudaSuccess;
  if (scores == nullptr || sel.keys == nullptr || sel.count == nullptr || sel.slot_counts == nullptr ||
      sel.blocked == nullptr || sel.whole == nullptr || sel.image_ids == nullptr || B > 65535 ||
      (H * W + kThreads - 1) / kThreads > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>((H * W + kThreads - 1) / kThreads), static_cast<unsigned>(B));
  compact_scores_kernel<<<grid, kThreads, 0, stream>>>(scores, labels, H, W, sel);
  return cudaGetLastError();
}

cudaError_t sort_keys_temp_bytes(int64_t n, int end_bit, size_t* bytes) {
  *bytes = 0;
  if (n <= 0) return cudaSuccess;
  return cub::DeviceRadixSort::SortKeys(nullptr, *bytes, static_cast<const uint64_t*>(nullptr),
                                        static_cast<uint64_t*>(nullptr), n, 0, end_bit);
}

cudaError_t sort_keys(const uint64_t* in, uint64_t* out, int64_t n, int end_bit, void* temp, size_t temp_bytes,
                      cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (in == nullptr || out == nullptr || temp == nullptr || end_bit <= 0 || end_bit > 64) return cudaErrorInvalidValue;
  size_t need = 0;
  cudaError_t err = sort_keys_temp_bytes(n, end_bit, &need);
  if (err != cudaSuccess) return err;
  if (need > temp_bytes) return cudaErrorInvalidValue;
  err = cub::DeviceRadixSort::SortKeys(temp, temp_bytes, in, out, n, 0, end_bit, stream);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

cudaError_t greedy(const uint64_t* sorted_keys, const unsigned long long* slot_counts, int64_t B, int64_t H,
                   int64_t W, int64_t radius, int pixbits, uint8_t* mask, int64_t quota, int64_t* out_pix,
                   float* out_score, int64_t* out_count, cudaStream_t stream) {
  if (B <= 0) return cudaSuccess;
  if (slot_counts == nullptr || mask == nullptr || out_count == nullptr || B > 0x7FFFFFFF || radius < 0 ||
      pixbits <= 0 || pixbits > 32 || quota < 0 || (quota > 0 && (out_pix == nullptr || out_score == nullptr)))
    return cudaErrorInvalidValue;
  greedy_kernel<<<static_cast<unsigned>(B), 32, 0, stream>>>(sorted_keys, slot_counts, H, W, radius, pixbits, mask,
                                                            quota, out_pix, out_score, out_count);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace cbda
