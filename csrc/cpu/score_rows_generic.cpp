// Pass A, portable build (no FMA instruction assumed: std::fma is then a libm call, slower
// but bit-identical to the AVX2+FMA build).
#pragma GCC optimize("fp-contract=off")
#include <cmath>

#include "score.h"
#include "score_math.h"

namespace cbda {
namespace generic {
#include "score_rows_impl.h"
}  // namespace generic
}  // namespace cbda
