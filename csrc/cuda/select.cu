// Exact pruning of the candidates before the greedy, and the trim of a round's pick buffer
// (docs/semantics.md, "Pruning"; docs/architecture.md, "Streaming global top-K").
//
// Both keep the best `limit` entries of a segment by the full order (score desc, global
// index asc) without sorting them: a radix select, most significant 8-bit digit first.
// Every pass histograms the digit of the entries that still match the prefix chosen so far
// (one histogram of 256 counters per segment), then one block per segment scans its
// histogram and appends the digit holding the limit-th entry to the prefix. After the last
// pass the prefix is that entry's key exactly: keys are distinct (they contain the pixel or
// global index), so "key <= prefix" keeps exactly `limit` entries of a segment that has more,
// and a segment with at most `limit` keeps everything. The passes read the entries again
// each time (about 1 + 2·(key bytes) reads per entry over a select: the entries are 8-16
// bytes and the selects run on at most one batch of candidates or the pick buffer), and
// nothing is read back by the host: counts stay in device words and the pass count depends
// on the key width only.
//
// Key widths: per image (ra/cbra), the candidate key without its slot, [~score | pix]; over a
// batch (da/cbda), [~score | rank of the image id in the batch | pix], which orders as
// (score desc, image id asc, pix asc) = (score desc, global index asc); the pick buffer,
// [~score | global index] over 96 bits, where the passes over gidx digits above the largest
// global index in the buffer (a device word) are skipped.
#include "common.cuh"

namespace cbda {
namespace cuda {
namespace {

using u128 = unsigned __int128;

constexpr int kThreads = 256;
constexpr int kDigit = 8;
constexpr int kBins = 1 << kDigit;
constexpr int64_t kMaxBlocks = 1 << 16;  // grid-stride beyond: per-block shared counts stay < 2^32
static_assert(kThreads == kBins, "the scan gives one thread per bin");

// Per segment, 4 int64 words: prefix (low, high 64 bits), rank still to find (1-based),
// active (more entries than the limit). The histograms follow: nseg·256 words.
struct SegState {
  unsigned long long lo, hi;
  long long k, active;
};
constexpr int64_t kStateWords = 4;

__device__ __forceinline__ SegState* states(long long* work) { return reinterpret_cast<SegState*>(work); }
__device__ __forceinline__ unsigned long long* hists(long long* work, int64_t nseg) {
  return reinterpret_cast<unsigned long long*>(work + nseg * kStateWords);
}

__device__ __forceinline__ u128 prefix_of(const SegState& s) {
  return (static_cast<u128>(s.hi) << 64) | static_cast<u128>(s.lo);
}

// entries matching the prefix in every bit above this pass's digit
__device__ __forceinline__ bool matches(u128 key, u128 prefix, int shift) {
  const int above = shift + kDigit;
  return above >= 128 || ((key ^ prefix) >> above) == 0;
}

__device__ __forceinline__ int digit(u128 key, int shift) { return static_cast<int>((key >> shift) & (kBins - 1)); }

// A pass over global-index digits that are zero in every entry (above the largest index in
// the buffer) is skipped by both kernels: its digit is 0 and the rank does not change.
__device__ __forceinline__ bool skip_pass(const int64_t* gmax, int shift) {
  return gmax != nullptr && shift < 64 && (static_cast<unsigned long long>(*gmax) >> shift) == 0ull;
}

// Sources: entry i -> (segment, select key); size() = entries (a device count or host n).
// Per batch slot: segment = slot, key = the candidate key's low 32 + pixbits bits.
struct SlotSource {
  const uint64_t* keys;
  int64_t n;
  int low;
  __device__ int64_t size() const { return n; }
  __device__ void at(int64_t i, int64_t& seg, u128& key) const {
    const uint64_t k = keys[i];
    seg = static_cast<int64_t>(k >> low);
    key = static_cast<u128>(k & ((1ull << low) - 1ull));
  }
};

// The whole batch: key = [~score | rank(slot) | pix].
struct BatchSource {
  const uint64_t* keys;
  int64_t n;
  int pixbits, slotbits;
  const int64_t* rank;
  __device__ int64_t size() const { return n; }
  __device__ void at(int64_t i, int64_t& seg, u128& key) const {
    const uint64_t k = keys[i];
    const uint64_t pix = k & ((1ull << pixbits) - 1ull);
    const uint64_t sc = (k >> pixbits) & 0xFFFFFFFFull;
    const uint64_t slot = k >> (32 + pixbits);
    seg = 0;
    key = static_cast<u128>((sc << (slotbits + pixbits)) | (static_cast<uint64_t>(rank[slot]) << pixbits) | pix);
  }
};

// The pick buffer: key = [~order_bits(score) | gidx] (96 bits), count in a device word.
struct PickSource {
  const float* scores;
  const int64_t* gidx;
  const int64_t* count;
  __device__ int64_t size() const { return *count; }
  __device__ void at(int64_t i, int64_t& seg, u128& key) const {
    seg = 0;
    key = (static_cast<u128>(~order_bits(scores[i])) << 64) | static_cast<u128>(static_cast<uint64_t>(gidx[i]));
  }
};

// counts: [nseg] entries per segment, or nullptr (one segment of n entries).
__global__ void init_kernel(const unsigned long long* counts, int64_t n, int64_t nseg, int64_t limit, long long* work) {
  const int64_t seg = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (seg >= nseg) return;
  SegState& s = states(work)[seg];
  const unsigned long long c = counts != nullptr ? counts[seg] : static_cast<unsigned long long>(n);
  s.lo = s.hi = 0ull;
  s.k = limit;
  s.active = c > static_cast<unsigned long long>(limit) ? 1 : 0;
  unsigned long long* h = hists(work, nseg) + seg * kBins;
  for (int d = 0; d < kBins; ++d) h[d] = 0ull;
}

template <typename Src>
__global__ void __launch_bounds__(kThreads) hist_kernel(const Src src, int64_t nseg, int shift, const int64_t* gmax,
                                                        long long* work) {
  if (skip_pass(gmax, shift)) return;
  const bool one = nseg == 1;
  const SegState* st = states(work);
  unsigned long long* hist = hists(work, nseg);
  if (one && st[0].active == 0) return;  // block-uniform
  __shared__ unsigned int sh[kBins];
  const int tid = threadIdx.x;
  if (one) {
    sh[tid] = 0u;
    __syncthreads();
  }
  const u128 one_prefix = one ? prefix_of(st[0]) : 0;
  const int64_t n = src.size();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  // base is block-uniform: every lane of a warp reaches the match below
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads; base < n; base += stride) {
    const int64_t i = base + tid;
    int64_t bin = -1;
    if (i < n) {
      int64_t seg;
      u128 key;
      src.at(i, seg, key);
      if (one) {
        if (matches(key, one_prefix, shift)) bin = digit(key, shift);
      } else {
        const SegState s = st[seg];
        if (s.active != 0 && matches(key, prefix_of(s), shift)) bin = seg * kBins + digit(key, shift);
      }
    }
    if (one) {
      if (bin >= 0) atomicAdd(&sh[bin], 1u);
    } else {
      // lanes of a warp mostly share a slot and, in the first passes, a digit: one atomic per bin
      const unsigned peers = __match_any_sync(0xFFFFFFFFu, bin);
      if (bin >= 0 && (threadIdx.x & 31) == __ffs(peers) - 1)
        atomicAdd(&hist[bin], static_cast<unsigned long long>(__popc(peers)));
    }
  }
  if (one) {
    __syncthreads();
    if (sh[tid] != 0u) atomicAdd(&hist[tid], static_cast<unsigned long long>(sh[tid]));
  }
}

// One block per segment: the digit d with (entries below d) < k <= (entries up to d) joins the
// prefix, k loses the entries below d; the histogram is cleared for the next pass.
__global__ void __launch_bounds__(kThreads) scan_kernel(int64_t nseg, int shift, const int64_t* gmax, long long* work) {
  const int64_t seg = blockIdx.x;
  const int tid = threadIdx.x;
  SegState& s = states(work)[seg];
  unsigned long long* h = hists(work, nseg) + seg * kBins;
  const unsigned long long c = h[tid];
  h[tid] = 0ull;
  if (s.active == 0 || skip_pass(gmax, shift)) return;  // block-uniform
  const long long k = s.k;
  __shared__ unsigned long long sc[kBins];
  sc[tid] = c;
  __syncthreads();
  for (int off = 1; off < kBins; off <<= 1) {  // Hillis-Steele inclusive scan
    const unsigned long long v = tid >= off ? sc[tid - off] : 0ull;
    __syncthreads();
    sc[tid] += v;
    __syncthreads();
  }
  const unsigned long long incl = sc[tid], excl = incl - c;
  if (excl < static_cast<unsigned long long>(k) && static_cast<unsigned long long>(k) <= incl) {
    const u128 p = prefix_of(s) | (static_cast<u128>(tid) << shift);
    s.lo = static_cast<unsigned long long>(p);
    s.hi = static_cast<unsigned long long>(p >> 64);
    s.k = k - static_cast<long long>(excl);
  }
}

// The cut-off only ever rises: (score, gidx) replaces it when it comes before it in the order
// (a stricter cut-off). One thread per launch writes (the threshold entry is unique).
__device__ __forceinline__ void raise_cutoff(float score, int64_t gidx, float* cut_score, int64_t* cut_gidx) {
  if (cut_score == nullptr) return;
  const float cs = *cut_score;
  const int64_t cg = *cut_gidx;
  if (score > cs || (score == cs && gidx < cg)) {
    *cut_score = score;
    *cut_gidx = gidx;
  }
}

// Keeps candidates at or before their segment's threshold: keys appended in any order (one
// reservation per warp), kept counts per slot (one atomic per slot present in a warp), and
// over a batch the threshold candidate itself raises the cut-off.
template <typename Src>
__global__ void __launch_bounds__(kThreads) keep_keys_kernel(const Src src, int64_t nseg, const long long* work,
                                                             int pixbits, const int64_t* image_ids, int64_t hw,
                                                             uint64_t* out, unsigned long long* out_count,
                                                             unsigned long long* out_slot_counts, float* cut_score,
                                                             int64_t* cut_gidx) {
  const SegState* st = reinterpret_cast<const SegState*>(work);
  const int64_t n = src.size();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads; base < n; base += stride) {
    const int64_t i = base + threadIdx.x;
    bool take = false;
    uint64_t key = 0;
    int64_t slot = -1;
    if (i < n) {
      int64_t seg;
      u128 sk;
      src.at(i, seg, sk);
      const SegState s = st[seg];
      const u128 prefix = prefix_of(s);
      key = src.keys[i];
      slot = static_cast<int64_t>(key >> (32 + pixbits));
      take = s.active == 0 || sk <= prefix;
      if (s.active != 0 && sk == prefix) {
        const int64_t pix = static_cast<int64_t>(key & ((1ull << pixbits) - 1ull));
        const float score = from_order_bits(~static_cast<uint32_t>(key >> pixbits));
        raise_cutoff(score, image_ids[slot] * hw + pix, cut_score, cut_gidx);
      }
    }
    const int64_t at = warp_append(take, out_count, nullptr);
    if (at >= 0) out[at] = key;
    const unsigned takers = __ballot_sync(0xFFFFFFFFu, take);
    if (take) {
      const unsigned peers = __match_any_sync(takers, slot);
      if ((threadIdx.x & 31) == __ffs(peers) - 1)
        atomicAdd(&out_slot_counts[slot], static_cast<unsigned long long>(__popc(peers)));
    }
  }
}

__global__ void __launch_bounds__(kThreads) keep_picks_kernel(const PickSource src, const int64_t* classes,
                                                              const long long* work, float* out_scores,
                                                              int64_t* out_gidx, int64_t* out_classes,
                                                              unsigned long long* out_count, float* cut_score,
                                                              int64_t* cut_gidx) {
  const SegState s = reinterpret_cast<const SegState*>(work)[0];
  const u128 prefix = prefix_of(s);
  const int64_t n = src.size();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads; base < n; base += stride) {
    const int64_t i = base + threadIdx.x;
    bool take = false;
    if (i < n) {
      int64_t seg;
      u128 sk;
      src.at(i, seg, sk);
      take = s.active == 0 || sk <= prefix;
      if (s.active != 0 && sk == prefix) raise_cutoff(src.scores[i], src.gidx[i], cut_score, cut_gidx);
    }
    const int64_t at = warp_append(take, out_count, nullptr);
    if (at >= 0) {
      out_scores[at] = src.scores[i];
      out_gidx[at] = src.gidx[i];
      out_classes[at] = classes[i];
    }
  }
}

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// init, then one histogram + scan per digit from the top: the thresholds end in `work`
template <typename Src>
cudaError_t run_select(const Src& src, int64_t bound, int64_t nseg, const unsigned long long* counts, int64_t limit,
                       int key_bits, const int64_t* gmax, long long* work, cudaStream_t stream) {
  init_kernel<<<static_cast<unsigned>((nseg + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      counts, bound, nseg, limit, work);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const unsigned grid = grid_for(bound);
  for (int shift = (key_bits - 1) / kDigit * kDigit; shift >= 0; shift -= kDigit) {
    hist_kernel<Src><<<grid, kThreads, 0, stream>>>(src, nseg, shift, gmax, work);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    scan_kernel<<<static_cast<unsigned>(nseg), kThreads, 0, stream>>>(nseg, shift, gmax, work);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

int64_t select_work_words(int64_t nseg) { return nseg * (kStateWords + kBins); }

cudaError_t prune_candidates(const uint64_t* keys, int64_t n, int64_t B, int pixbits, bool per_slot, int64_t limit,
                             const unsigned long long* slot_counts, const int64_t* slot_rank,
                             const int64_t* image_ids, int64_t hw, long long* work, uint64_t* out_keys,
                             unsigned long long* out_count, unsigned long long* out_slot_counts, float* cut_score,
                             int64_t* cut_gidx, cudaStream_t stream) {
  if (n <= 0 || B <= 0) return cudaSuccess;
  const int slotbits = B > 1 ? 64 - __builtin_clzll(static_cast<unsigned long long>(B - 1)) : 0;
  if (keys == nullptr || work == nullptr || out_keys == nullptr || out_count == nullptr ||
      out_slot_counts == nullptr || limit < 1 || pixbits <= 0 || pixbits > 32 || 32 + pixbits + slotbits > 64 ||
      B > 0x7FFFFFFF || (cut_score == nullptr) != (cut_gidx == nullptr))
    return cudaErrorInvalidValue;
  cudaError_t err;
  if (per_slot) {
    if (slot_counts == nullptr) return cudaErrorInvalidValue;
    const SlotSource src{keys, n, 32 + pixbits};
    if ((err = run_select(src, n, B, slot_counts, limit, 32 + pixbits, nullptr, work, stream)) != cudaSuccess)
      return err;
    keep_keys_kernel<SlotSource><<<grid_for(n), kThreads, 0, stream>>>(src, B, work, pixbits, image_ids, hw, out_keys,
                                                                       out_count, out_slot_counts, nullptr, nullptr);
  } else {
    if (slot_rank == nullptr || image_ids == nullptr) return cudaErrorInvalidValue;
    const BatchSource src{keys, n, pixbits, slotbits, slot_rank};
    if ((err = run_select(src, n, 1, nullptr, limit, 32 + slotbits + pixbits, nullptr, work, stream)) != cudaSuccess)
      return err;
    keep_keys_kernel<BatchSource><<<grid_for(n), kThreads, 0, stream>>>(src, 1, work, pixbits, image_ids, hw, out_keys,
                                                                        out_count, out_slot_counts, cut_score, cut_gidx);
  }
  return cudaGetLastError();
}

cudaError_t trim_picks(const float* scores, const int64_t* gidx, const int64_t* classes, const int64_t* count,
                       int64_t bound, const int64_t* gmax, int64_t limit, long long* work, float* out_scores,
                       int64_t* out_gidx, int64_t* out_classes, unsigned long long* out_count, float* cut_score,
                       int64_t* cut_gidx, cudaStream_t stream) {
  if (bound <= 0) return cudaSuccess;
  if (scores == nullptr || gidx == nullptr || classes == nullptr || count == nullptr || work == nullptr ||
      out_scores == nullptr || out_gidx == nullptr || out_classes == nullptr || out_count == nullptr || limit < 1 ||
      (cut_score == nullptr) != (cut_gidx == nullptr))
    return cudaErrorInvalidValue;
  const PickSource src{scores, gidx, count};
  cudaError_t err = run_select(src, bound, 1, reinterpret_cast<const unsigned long long*>(count), limit, 96, gmax,
                               work, stream);
  if (err != cudaSuccess) return err;
  keep_picks_kernel<<<grid_for(bound), kThreads, 0, stream>>>(src, classes, work, out_scores, out_gidx, out_classes,
                                                             out_count, cut_score, cut_gidx);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace cbda
