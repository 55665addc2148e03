// Pass A, portable build (no FMA instruction assumed: std::fma is then a libm call, slower
// but bit-identical to the AVX2+FMA build).
// no-trapping-math lets the compiler if-convert float selects (results are unchanged: it
// only drops the assumption that FP exceptions are observed)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#include <cmath>

#include "score.h"
#include "score_math.h"

namespace cbda {
namespace generic {
#include "score_rows_impl.h"
}  // namespace generic
}  // namespace cbda
