// Pass A, AVX2+FMA build: the same source as score_rows_generic.cpp compiled for 8-lane
// vectors with hardware fma; chosen at run time when the CPU has both (score.cpp).
// no-trapping-math lets the compiler if-convert float selects (results are unchanged: it
// only drops the assumption that FP exceptions are observed)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#include <cmath>

#include "score.h"
#include "score_math.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace cbda {
namespace avx2 {
#include "score_rows_impl.h"
}  // namespace avx2
}  // namespace cbda
#pragma GCC pop_options
#else  // no such variant elsewhere: have_avx2_fma() is false, this is never called
namespace cbda {
namespace avx2 {
void pass_a_rows(const LogitsView& lv, const ScoreConfig& cfg, int64_t b, uint64_t id, int64_t y0,
                 int64_t y1, float* E, int32_t* L, RowScratch& rs, int64_t* hist) {
  generic::pass_a_rows(lv, cfg, b, id, y0, y1, E, L, rs, hist);
}
}  // namespace avx2
}  // namespace cbda
#endif
