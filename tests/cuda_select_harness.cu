// Host harness for csrc/cuda/select.cuh (built and driven by tests/test_cuda_select_host.py):
// runs the radix select's per-entry steps in the order the kernels of select.cu apply them
// (init, per digit a histogram then a scan per segment, then the keep test and the cut-off),
// sequentially, on the CPU. No CUDA call is made, so it runs without a GPU.
//
// stdin (whitespace-separated integers):
//   mode (0 per slot, 1 per batch, 2 picks)
//   mode 0/1: n B pixbits limit hw, keys[n], slot_counts[B], rank[B], image_ids[B]
//   mode 2:   n limit gmax, score bits[n] (uint32 of the float), gidx[n]
//   has_cut cut_score_bits cut_gidx
// stdout: the kept entry indices, ascending, one line; then "cut <score bits> <gidx>".
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda/select.cuh"

using namespace cbda::cuda;
using namespace cbda::cuda::select;

namespace {

long long next_int() {
  long long v = 0;
  if (std::scanf("%lld", &v) != 1) {
    std::fprintf(stderr, "bad input\n");
    std::exit(2);
  }
  return v;
}

template <typename Src>
std::vector<long long> run(const Src& src, int64_t nseg, const unsigned long long* counts, int64_t n, int64_t limit,
                           int key_bits, const int64_t* gmax) {
  std::vector<long long> work(nseg * (kStateWords + kBins), 0);
  SegState* st = states(work.data());
  unsigned long long* hist = hists(work.data(), nseg);
  for (int64_t s = 0; s < nseg; ++s) init_state(st[s], counts != nullptr ? counts[s] : n, limit);  // init_kernel
  for (int shift = top_shift(key_bits); shift >= 0; shift -= kDigit) {
    if (!skip_pass(gmax, shift)) {  // hist_kernel
      for (int64_t i = 0; i < src.size(); ++i) {
        const int64_t bin = hist_bin(src, i, st, shift);
        if (bin >= 0) ++hist[bin];
      }
    }
    for (int64_t s = 0; s < nseg; ++s) {  // scan_kernel: block s, thread d
      unsigned long long* h = hist + s * kBins;
      if (st[s].active != 0 && !skip_pass(gmax, shift)) {
        const long long k = st[s].k;
        unsigned long long incl = 0;
        int winners = 0;
        for (int d = 0; d < kBins; ++d) {
          incl += h[d];
          winners += scan_step(st[s], k, d, incl - h[d], incl, shift) ? 1 : 0;
        }
        if (winners != 1) {
          std::fprintf(stderr, "segment %lld: %d digits claimed the rank\n", static_cast<long long>(s), winners);
          std::exit(3);
        }
      }
      for (int d = 0; d < kBins; ++d) h[d] = 0ull;
    }
  }
  return work;
}

}  // namespace

int main() {
  const int mode = static_cast<int>(next_int());
  std::vector<uint64_t> keys;
  std::vector<unsigned long long> slot_counts;
  std::vector<int64_t> rank, ids, gidx;
  std::vector<float> scores;
  std::vector<int> kept;
  int64_t n = 0, B = 1, limit = 0, hw = 0, gmax = 0;
  int pixbits = 0;
  n = next_int();
  if (mode != 2) {
    B = next_int();
    pixbits = static_cast<int>(next_int());
    limit = next_int();
    hw = next_int();
    keys.resize(n);
    for (auto& k : keys) k = static_cast<uint64_t>(next_int());
    slot_counts.resize(B);
    for (auto& c : slot_counts) c = static_cast<unsigned long long>(next_int());
    rank.resize(B);
    for (auto& r : rank) r = next_int();
    ids.resize(B);
    for (auto& v : ids) v = next_int();
  } else {
    limit = next_int();
    gmax = next_int();
    scores.resize(n);
    for (auto& f : scores) {
      const uint32_t bits = static_cast<uint32_t>(next_int());
      std::memcpy(&f, &bits, 4);
    }
    gidx.resize(n);
    for (auto& g : gidx) g = next_int();
  }
  const bool has_cut = next_int() != 0;
  uint32_t cut_bits = static_cast<uint32_t>(next_int());
  int64_t cut_gidx = next_int();
  float cut_score;
  std::memcpy(&cut_score, &cut_bits, 4);
  float* cs = has_cut ? &cut_score : nullptr;
  int64_t* cg = has_cut ? &cut_gidx : nullptr;

  const int slotbits = B > 1 ? 64 - __builtin_clzll(static_cast<unsigned long long>(B - 1)) : 0;
  if (mode == 0 || mode == 1) {
    const SlotSource slot_src{keys.data(), n, pixbits};
    const BatchSource batch_src{keys.data(), n, pixbits, slotbits, rank.data()};
    const std::vector<long long> work =
        mode == 0 ? run(slot_src, B, slot_counts.data(), n, limit, 32 + pixbits, nullptr)
                  : run(batch_src, 1, nullptr, n, limit, 32 + slotbits + pixbits, nullptr);
    for (int64_t i = 0; i < n; ++i) {  // keep_keys_kernel
      bool threshold = false;
      const bool take = mode == 0 ? keep_entry(slot_src, i, states(work.data()), threshold)
                                  : keep_entry(batch_src, i, states(work.data()), threshold);
      if (threshold && cs != nullptr) {
        float score;
        int64_t g;
        candidate_at(keys[i], pixbits, ids.data(), hw, score, g);
        raise_cutoff(score, g, cs, cg);
      }
      if (take) kept.push_back(static_cast<int>(i));
    }
  } else {
    const PickSource src{scores.data(), gidx.data(), &n};
    const std::vector<long long> work =
        run(src, 1, reinterpret_cast<const unsigned long long*>(&n), n, limit, 96, &gmax);
    for (int64_t i = 0; i < n; ++i) {  // keep_picks_kernel
      bool threshold = false;
      const bool take = keep_entry(src, i, states(work.data()), threshold);
      if (threshold) raise_cutoff(scores[i], gidx[i], cs, cg);
      if (take) kept.push_back(static_cast<int>(i));
    }
  }
  for (size_t j = 0; j < kept.size(); ++j) std::printf(j ? " %d" : "%d", kept[j]);
  std::memcpy(&cut_bits, &cut_score, 4);
  std::printf("\ncut %u %lld\n", cut_bits, static_cast<long long>(cut_gidx));
  return 0;
}
