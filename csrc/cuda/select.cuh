// The per-entry steps of the radix select in select.cu, as __host__ __device__ functions: the
// kernels are thin parallel loops around them, and tests/cuda_select_harness.cu runs the same
// steps in sequence on the CPU (tests/test_cuda_select_host.py), so the key layouts, the digit
// and prefix arithmetic, the skipped passes and the cut-off rule are tested without a GPU.
//
// A select finds, per segment, the key of its limit-th entry (ascending keys = the order
// score desc, index asc): digits of 8 bits from the most significant; a pass counts, per
// digit value, the entries that match the prefix chosen so far in every higher bit, and the
// digit holding the limit-th entry joins the prefix. Keys are distinct (they contain a pixel
// or global index), so after the last pass "key <= prefix" holds for exactly `limit` entries.
#pragma once

#include "common.cuh"

namespace cbda {
namespace cuda {
namespace select {

using u128 = unsigned __int128;

constexpr int kDigit = 8;
constexpr int kBins = 1 << kDigit;

// Per segment, 4 int64 words: prefix (low, high 64 bits), rank still to find (1-based),
// active (more entries than the limit). The histograms follow: nseg·256 words.
struct SegState {
  unsigned long long lo, hi;
  long long k, active;
};
constexpr int64_t kStateWords = 4;

__host__ __device__ __forceinline__ SegState* states(long long* work) { return reinterpret_cast<SegState*>(work); }
__host__ __device__ __forceinline__ const SegState* states(const long long* work) {
  return reinterpret_cast<const SegState*>(work);
}
__host__ __device__ __forceinline__ unsigned long long* hists(long long* work, int64_t nseg) {
  return reinterpret_cast<unsigned long long*>(work + nseg * kStateWords);
}

__host__ __device__ __forceinline__ u128 prefix_of(const SegState& s) {
  return (static_cast<u128>(s.hi) << 64) | static_cast<u128>(s.lo);
}

// First pass's shift for keys of `key_bits` bits (the passes go down to 0 by kDigit).
__host__ __device__ __forceinline__ int top_shift(int key_bits) { return (key_bits - 1) / kDigit * kDigit; }

__host__ __device__ __forceinline__ void init_state(SegState& s, unsigned long long count, int64_t limit) {
  s.lo = s.hi = 0ull;
  s.k = limit;
  s.active = count > static_cast<unsigned long long>(limit) ? 1 : 0;
}

// Entries matching the prefix in every bit above this pass's digit.
__host__ __device__ __forceinline__ bool matches(u128 key, u128 prefix, int shift) {
  const int above = shift + kDigit;
  return above >= 128 || ((key ^ prefix) >> above) == 0;
}

__host__ __device__ __forceinline__ int digit(u128 key, int shift) {
  return static_cast<int>((key >> shift) & (kBins - 1));
}

// A pass over global-index digits that are zero in every entry (above the largest index in
// the pick buffer, a device word) is skipped: its digit is 0 and the rank does not change.
__host__ __device__ __forceinline__ bool skip_pass(const int64_t* gmax, int shift) {
  return gmax != nullptr && shift < 64 && (static_cast<unsigned long long>(*gmax) >> shift) == 0ull;
}

// Sources: entry i -> (segment, select key); size() = entries (host n or a device count).
// Per batch slot: segment = slot, key = the candidate key's low 32 + pixbits bits
// [~score | pix] (common.cuh: candidate_key).
struct SlotSource {
  const uint64_t* keys;
  int64_t n;
  int pixbits;
  __host__ __device__ int64_t size() const { return n; }
  __host__ __device__ void at(int64_t i, int64_t& seg, u128& key) const {
    const uint64_t k = keys[i];
    const int low = 32 + pixbits;  // 64 only with a single slot
    seg = low >= 64 ? 0 : static_cast<int64_t>(k >> low);
    key = static_cast<u128>(low >= 64 ? k : (k & ((1ull << low) - 1ull)));
  }
};

// The whole batch: key = [~score | rank of the slot's image id | pix], i.e. the order
// (score desc, image id asc, pix asc) = (score desc, global index asc) in 32 + slot bits +
// pixel bits <= 64 (the image id itself may need more bits than its rank).
struct BatchSource {
  const uint64_t* keys;
  int64_t n;
  int pixbits, slotbits;
  const int64_t* rank;
  __host__ __device__ int64_t size() const { return n; }
  __host__ __device__ void at(int64_t i, int64_t& seg, u128& key) const {
    const uint64_t k = keys[i];
    const uint64_t pix = k & ((1ull << pixbits) - 1ull);
    const uint64_t sc = (k >> pixbits) & 0xFFFFFFFFull;
    const uint64_t slot = pixbits >= 32 ? 0ull : k >> (32 + pixbits);
    seg = 0;
    key = static_cast<u128>((sc << (slotbits + pixbits)) | (static_cast<uint64_t>(rank[slot]) << pixbits) | pix);
  }
};

// The pick buffer: key = [~order_bits(score) | gidx] over 96 bits, count in a device word.
struct PickSource {
  const float* scores;
  const int64_t* gidx;
  const int64_t* count;
  __host__ __device__ int64_t size() const { return *count; }
  __host__ __device__ void at(int64_t i, int64_t& seg, u128& key) const {
    seg = 0;
    key = (static_cast<u128>(~order_bits(scores[i])) << 64) | static_cast<u128>(static_cast<uint64_t>(gidx[i]));
  }
};

// The histogram bin (segment·256 + digit) entry i counts in this pass, or -1.
template <typename Src>
__host__ __device__ __forceinline__ int64_t hist_bin(const Src& src, int64_t i, const SegState* st, int shift) {
  int64_t seg;
  u128 key;
  src.at(i, seg, key);
  const SegState& s = st[seg];
  if (s.active == 0 || !matches(key, prefix_of(s), shift)) return -1;
  return seg * kBins + digit(key, shift);
}

// Digit d of an active segment, with `excl` entries below it and `incl` up to it, and k the
// segment's rank before this pass (read before any thread can write it): when d holds the
// k-th entry, it joins the prefix and k loses the entries below it. Exactly one digit of a
// pass does (the counts add up to at least k).
__host__ __device__ __forceinline__ bool scan_step(SegState& s, long long rank, int d, unsigned long long excl,
                                                   unsigned long long incl, int shift) {
  const unsigned long long k = static_cast<unsigned long long>(rank);
  if (!(excl < k && k <= incl)) return false;
  const u128 p = prefix_of(s) | (static_cast<u128>(d) << shift);
  s.lo = static_cast<unsigned long long>(p);
  s.hi = static_cast<unsigned long long>(p >> 64);
  s.k = static_cast<long long>(k - excl);
  return true;
}

// After the passes: entry i is kept when its segment has no more than the limit or its key is
// at or before the threshold; `threshold` is set for the limit-th entry itself.
template <typename Src>
__host__ __device__ __forceinline__ bool keep_entry(const Src& src, int64_t i, const SegState* st, bool& threshold) {
  int64_t seg;
  u128 key;
  src.at(i, seg, key);
  const SegState& s = st[seg];
  threshold = s.active != 0 && key == prefix_of(s);
  return s.active == 0 || key <= prefix_of(s);
}

// The cut-off only ever rises: (score, gidx) replaces it when it comes first in the order
// (score desc, gidx asc), i.e. it is stricter. One thread per launch writes (the threshold
// entry is unique); nullptr = no cut-off to raise.
__host__ __device__ __forceinline__ void raise_cutoff(float score, int64_t gidx, float* cut_score, int64_t* cut_gidx) {
  if (cut_score == nullptr) return;
  const float cs = *cut_score;
  const int64_t cg = *cut_gidx;
  if (score > cs || (score == cs && gidx < cg)) {
    *cut_score = score;
    *cut_gidx = gidx;
  }
}

// The batch slot of a candidate key (common.cuh: candidate_key).
__host__ __device__ __forceinline__ int64_t slot_of(uint64_t key, int pixbits) {
  return pixbits >= 32 ? 0 : static_cast<int64_t>(key >> (32 + pixbits));
}

// The (score, global index) of a candidate key of a batch call.
__host__ __device__ __forceinline__ void candidate_at(uint64_t key, int pixbits, const int64_t* image_ids, int64_t hw,
                                                      float& score, int64_t& gidx) {
  const int64_t pix = static_cast<int64_t>(key & ((1ull << pixbits) - 1ull));
  score = from_order_bits(~static_cast<uint32_t>(key >> pixbits));
  gidx = image_ids[slot_of(key, pixbits)] * hw + pix;
}

}  // namespace select
}  // namespace cuda
}  // namespace cbda
