// GELU, tanh approximation as in GPT-2 (forward, and backward writing dinp).
//
// 0.5 * x * (1 + tanh(u)) is evaluated as x * sigmoid(2u) = x / (1 + exp(-2u)), the same function written so that
// it keeps full relative precision where 1 + tanh(u) cancels (x << 0) and needs one exp instead of tanh. For float,
// exp is a branch-free polynomial (below) that the compiler vectorises; libm's scalar tanhf/expf made GELU cost
// about as much as the MLP matmuls on the benchmark model.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/ops.hpp"

namespace zt::cpu {
namespace {

constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluCubic = 0.044715;

// exp(x) for float to about 2 ulp, without branches so that loops calling it vectorise: x = n ln2 + r with
// |r| <= ln2/2, exp(r) by the Cephes minimax polynomial, 2^n assembled in the exponent bits. x is first clamped
// to [-87, 88] (results stay normal; callers only use exp inside 1 / (1 + exp), where that clamp is invisible).
// The clamp compares bit patterns as integers: a float compare-and-select is not if-converted (so not vectorised)
// under GCC's default -ftrapping-math. Positive floats order like their bits as int32; negative ones like their
// bits as uint32.
inline float exp_poly(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  // Literal operands keep each ?: a prvalue select; a named constant makes it an lvalue (a branch) in GCC 12.
  bits = bits > 0x42B00000 ? 0x42B00000 : bits;  // 88.0f: x > 88, +inf
  uint32_t ubits = uint32_t(bits);
  ubits = ubits > 0xC2AE0000u ? 0xC2AE0000u : ubits;  // -87.0f: x < -87, -inf
  std::memcpy(&x, &ubits, sizeof(x));
  // Round x / ln2 to the nearest integer by adding 1.5 * 2^23: the integer lands in the low mantissa bits.
  const float magic = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + magic;
  const float n = shifted - magic;
  int32_t n_int;
  std::memcpy(&n_int, &shifted, sizeof(n_int));
  n_int -= 0x4B400000;             // bit pattern of magic
  float r = x - n * 0.693359375f;  // ln2 split in two parts so that n * ln2_hi is exact
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t scale_bits = (n_int + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  return p * scale;
}

// exp with its argument clamped so that it stays finite (float: by exp_poly; double: at 708 < log(DBL_MAX)).
template <typename T>
inline T exp_clamped(T x) {
  if constexpr (std::is_same_v<T, float>)
    return exp_poly(x);
  else
    return std::exp(x < -708.0 ? -708.0 : x > 708.0 ? 708.0 : x);
}

// The chunk kernels are compiled twice, for AVX2+FMA and for the baseline ISA, and picked at load time (as in
// attention.cpp), so a portable build still evaluates GELU 8 lanes wide where the CPU can.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__AVX2__)
#define ZT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ZT_CPU_CLONES
#endif

// Elements per parallel work item; GELU is elementwise, so the split never changes a result.
constexpr size_t kChunk = 8192;

template <typename T>
ZT_CPU_CLONES void gelu_forward_chunk(T* out, const T* inp, size_t n) {
  const T k2 = T(-2 * kSqrt2OverPi), c3 = T(kGeluCubic);
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const T x = inp[i];
    out[i] = x / (T(1) + exp_clamped(k2 * (x + c3 * x * x * x)));
  }
}

template <typename T>
ZT_CPU_CLONES void gelu_backward_chunk(T* dinp, const T* inp, const T* dout, size_t n) {
  const T k2 = T(-2 * kSqrt2OverPi), c3 = T(kGeluCubic);
  const T dk = T(2 * kSqrt2OverPi), dc3 = T(3 * kGeluCubic);
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T e = exp_clamped(k2 * (x + c3 * x * x * x));  // exp(-2u)
    const T s = T(1) / (T(1) + e);                       // sigmoid(2u) = (1 + tanh u) / 2
    // d/dx [x s] = s + x * 2 s (1 - s) * du/dx, du/dx = sqrt(2/pi) (1 + 3 c x^2), 2 s (1 - s) = sech^2(u) / 2.
    // s (1 - s) is formed as (e s) s: 1 - s cancels to nothing in float once s is within an ulp of 1 (x > 4).
    const T grad = s + x * ((e * s) * s) * dk * (T(1) + dc3 * x * x);
    dinp[i] = grad * dout[i];
  }
}

}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, size_t n) {
  const long n_chunks = long((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (long c = 0; c < n_chunks; ++c) {
    const size_t i0 = size_t(c) * kChunk;
    gelu_forward_chunk(out + i0, inp + i0, n - i0 < kChunk ? n - i0 : kChunk);
  }
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n) {
  const long n_chunks = long((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (long c = 0; c < n_chunks; ++c) {
    const size_t i0 = size_t(c) * kChunk;
    gelu_backward_chunk(dinp + i0, inp + i0, dout + i0, n - i0 < kChunk ? n - i0 : kChunk);
  }
}

template void gelu_forward<float>(float*, const float*, size_t);
template void gelu_forward<double>(double*, const double*, size_t);
template void gelu_backward<float>(float*, const float*, const float*, size_t);
template void gelu_backward<double>(double*, const double*, const double*, size_t);

}  // namespace zt::cpu
