// murmur3's 32-bit finaliser: the hash chain of the seeded random heuristic
// (cbda.scores.mix32). One definition for the C++ and CUDA kernels, which must agree with
// the Python reference bit for bit.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define CBDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CBDA_HOST_DEVICE inline
#endif

namespace cbda {

CBDA_HOST_DEVICE uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

}  // namespace cbda
