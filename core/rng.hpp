// Philox4x32-10 counter-based RNG: every random number is a pure function of (key, counter).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace zt {

/// One Philox4x32-10 block: 4 random 32-bit words for a 128-bit counter under a 64-bit key.
inline std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, uint64_t key64) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t k0 = static_cast<uint32_t>(key64), k1 = static_cast<uint32_t>(key64 >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kM0) * ctr[0];
    uint64_t p1 = uint64_t(kM1) * ctr[2];
    ctr = {uint32_t(p1 >> 32) ^ ctr[1] ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ ctr[3] ^ k1, uint32_t(p0)};
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

/// 64-bit FNV-1a of a string: a stable stream id for a tensor name on every platform.
inline uint64_t stable_hash(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

/// Uniform in (0, 1] from a 32-bit word (never 0, so log() is safe).
inline double u32_to_unit(uint32_t x) { return (double(x) + 1.0) / 4294967296.0; }

/// Standard normal for element `index` of stream `stream` under `seed` (Box-Muller on one Philox block).
inline double philox_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  auto r = philox4x32({uint32_t(index), uint32_t(index >> 32), uint32_t(stream), uint32_t(stream >> 32)}, seed);
  double u1 = u32_to_unit(r[0]), u2 = u32_to_unit(r[1]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
}

/// 64 uniform bits for element `index` of stream `stream` under `seed`.
inline uint64_t philox_u64(uint64_t seed, uint64_t stream, uint64_t index) {
  auto r = philox4x32({uint32_t(index), uint32_t(index >> 32), uint32_t(stream), uint32_t(stream >> 32)}, seed);
  return (uint64_t(r[0]) << 32) | r[1];
}

}  // namespace zt
