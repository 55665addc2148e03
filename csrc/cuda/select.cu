// Exact pruning of the candidates before the greedy, and the trim of a round's pick buffer
// (docs/semantics.md, "Pruning"; docs/architecture.md, "Streaming global top-K").
//
// Both keep the best `limit` entries of a segment by the full order (score desc, global
// index asc) without sorting them: a radix select (select.cuh has the per-entry steps and
// the key layouts). Per digit, from the most significant:
//   hist_kernel  one thread per entry: the entry's bin (segment, digit) if it still matches
//                its segment's prefix; one segment counts in shared memory (one global
//                atomic per bin per block), several (one per image) count in global memory
//                with one atomic per distinct bin of a warp (__match_any_sync: a warp's
//                candidates mostly share a slot and, in the early passes, a digit);
//   scan_kernel  one block per segment: a 256-wide inclusive scan of its histogram, the
//                thread whose digit holds the k-th entry extends the prefix; the histogram
//                is cleared for the next pass.
// Then keep_*_kernel appends every entry at or before its segment's threshold (one
// reservation per warp) and the threshold entry raises the cut-off. Memory traffic: each
// pass reads the entries once (8-16 bytes each; 6-8 passes for candidate keys, 4 + the gidx
// digits below the largest index for picks); nothing is read back by the host, and the
// pass count depends only on the key width.
#include "select.cuh"

namespace cbda {
namespace cuda {
namespace {

using select::BatchSource;
using select::kBins;
using select::kDigit;
using select::PickSource;
using select::SegState;
using select::SlotSource;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;  // grid-stride beyond: per-block shared counts stay < 2^32
static_assert(kThreads == kBins, "the scan gives one thread per bin");

// counts: [nseg] entries per segment, or nullptr (one segment of n entries).
__global__ void init_kernel(const unsigned long long* counts, int64_t n, int64_t nseg, int64_t limit, long long* work) {
  const int64_t seg = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (seg >= nseg) return;
  select::init_state(select::states(work)[seg], counts != nullptr ? counts[seg] : static_cast<unsigned long long>(n),
                     limit);
  unsigned long long* h = select::hists(work, nseg) + seg * kBins;
  for (int d = 0; d < kBins; ++d) h[d] = 0ull;
}

template <typename Src>
__global__ void __launch_bounds__(kThreads) hist_kernel(const Src src, int64_t nseg, int shift, const int64_t* gmax,
                                                        long long* work) {
  if (select::skip_pass(gmax, shift)) return;
  const bool one = nseg == 1;
  const SegState* st = select::states(work);
  unsigned long long* hist = select::hists(work, nseg);
  if (one && st[0].active == 0) return;  // block-uniform
  __shared__ unsigned int sh[kBins];
  const int tid = threadIdx.x;
  if (one) {
    sh[tid] = 0u;
    __syncthreads();
  }
  const int64_t n = src.size();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  // base is block-uniform: every lane of a warp reaches the match below
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads; base < n; base += stride) {
    const int64_t i = base + tid;
    const int64_t bin = i < n ? select::hist_bin(src, i, st, shift) : -1;
    if (one) {
      if (bin >= 0) atomicAdd(&sh[bin], 1u);
    } else {
      const unsigned peers = __match_any_sync(0xFFFFFFFFu, bin);
      if (bin >= 0 && (tid & 31) == __ffs(peers) - 1)
        atomicAdd(&hist[bin], static_cast<unsigned long long>(__popc(peers)));
    }
  }
  if (one) {
    __syncthreads();
    if (sh[tid] != 0u) atomicAdd(&hist[tid], static_cast<unsigned long long>(sh[tid]));
  }
}

__global__ void __launch_bounds__(kThreads) scan_kernel(int64_t nseg, int shift, const int64_t* gmax, long long* work) {
  const int64_t seg = blockIdx.x;
  const int tid = threadIdx.x;
  SegState& s = select::states(work)[seg];
  unsigned long long* h = select::hists(work, nseg) + seg * kBins;
  const unsigned long long c = h[tid];
  h[tid] = 0ull;
  if (s.active == 0 || select::skip_pass(gmax, shift)) return;  // block-uniform
  const long long k = s.k;  // before the barriers: the one writer below changes it
  __shared__ unsigned long long sc[kBins];
  sc[tid] = c;
  __syncthreads();
  for (int off = 1; off < kBins; off <<= 1) {  // Hillis-Steele inclusive scan
    const unsigned long long v = tid >= off ? sc[tid - off] : 0ull;
    __syncthreads();
    sc[tid] += v;
    __syncthreads();
  }
  const unsigned long long incl = sc[tid];
  select::scan_step(s, k, tid, incl - c, incl, shift);  // one thread (one digit) writes
}

// Kept candidate keys (any order, one reservation per warp), kept counts per slot (one atomic
// per slot present in a warp), and the threshold candidate raises the cut-off.
template <typename Src>
__global__ void __launch_bounds__(kThreads) keep_keys_kernel(const Src src, const long long* work, int pixbits,
                                                             const int64_t* image_ids, int64_t hw, uint64_t* out,
                                                             unsigned long long* out_count,
                                                             unsigned long long* out_slot_counts, float* cut_score,
                                                             int64_t* cut_gidx) {
  const SegState* st = select::states(work);
  const int64_t n = src.size();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads; base < n; base += stride) {
    const int64_t i = base + threadIdx.x;
    bool take = false, threshold = false;
    uint64_t key = 0;
    int64_t slot = -1;
    if (i < n) {
      take = select::keep_entry(src, i, st, threshold);
      key = src.keys[i];
      slot = select::slot_of(key, pixbits);
      if (threshold && cut_score != nullptr) {
        float score;
        int64_t gidx;
        select::candidate_at(key, pixbits, image_ids, hw, score, gidx);
        select::raise_cutoff(score, gidx, cut_score, cut_gidx);
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
  const SegState* st = select::states(work);
  const int64_t n = src.size();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads; base < n; base += stride) {
    const int64_t i = base + threadIdx.x;
    bool take = false, threshold = false;
    if (i < n) {
      take = select::keep_entry(src, i, st, threshold);
      if (threshold) select::raise_cutoff(src.scores[i], src.gidx[i], cut_score, cut_gidx);
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
  for (int shift = select::top_shift(key_bits); shift >= 0; shift -= kDigit) {
    hist_kernel<Src><<<grid, kThreads, 0, stream>>>(src, nseg, shift, gmax, work);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    scan_kernel<<<static_cast<unsigned>(nseg), kThreads, 0, stream>>>(nseg, shift, gmax, work);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

int64_t select_work_words(int64_t nseg) { return nseg * (select::kStateWords + kBins); }

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
    const SlotSource src{keys, n, pixbits};
    if ((err = run_select(src, n, B, slot_counts, limit, 32 + pixbits, nullptr, work, stream)) != cudaSuccess)
      return err;
    keep_keys_kernel<SlotSource><<<grid_for(n), kThreads, 0, stream>>>(src, work, pixbits, image_ids, hw, out_keys,
                                                                       out_count, out_slot_counts, nullptr, nullptr);
  } else {
    if (slot_rank == nullptr || (cut_score != nullptr && image_ids == nullptr)) return cudaErrorInvalidValue;
    const BatchSource src{keys, n, pixbits, slotbits, slot_rank};
    if ((err = run_select(src, n, 1, nullptr, limit, 32 + slotbits + pixbits, nullptr, work, stream)) != cudaSuccess)
      return err;
    keep_keys_kernel<BatchSource><<<grid_for(n), kThreads, 0, stream>>>(
        src, work, pixbits, image_ids, hw, out_keys, out_count, out_slot_counts, cut_score, cut_gidx);
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
