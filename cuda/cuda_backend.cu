// CudaBackend: the Backend contract over device memory on one stream, forwarding to the op launchers in cuda/.
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "cuda/adamw.cuh"
#include "cuda/attention.cuh"
#include "cuda/backend_stream.cuh"
#include "cuda/cast.cuh"
#include "cuda/cuda_backend.hpp"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_graph.cuh"
#include "cuda/device_memory.cuh"
#include "cuda/embedding.cuh"
#include "cuda/gelu.cuh"
#include "cuda/layernorm.cuh"
#include "cuda/matmul.cuh"
#include "cuda/residual.cuh"
#include "cuda/softmax_cross_entropy.cuh"
#include "cuda/squared_norm.cuh"

namespace zt {
namespace {

// A two-way kernel choice, made when a backend is made: the flag's value (true when it is `flag_other`) unless it
// is "auto"; then the deprecated environment variable, read for one release (bench/gpu/run_check.sh sets them):
// true when `name` is set to `other`, false when it is unset or `usual`; any other value is refused.
bool variant_choice(const std::string& flag_value, const char* flag_other, const char* name, const char* usual,
                    const char* other, const char* expected) {
  if (flag_value != "auto") return flag_value == flag_other;
  const char* value = std::getenv(name);
  const std::string choice = value != nullptr ? value : usual;
  ZT_CHECK(choice == usual || choice == other, "{}={}: expected {}", name, choice, expected);
  return choice == other;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, bool bf16, const CudaVariants& variants) : device_(device) {
    const int n_devices = cuda_device_count();
    ZT_CHECK(device >= 0 && device < n_devices, "CUDA device {} does not exist: this process sees {} device(s)", device,
             n_devices);
    // --cuda_activations bf16 holds in bf16 the activations the model offers (keep_activation_bf16); auto is fp32
    // until a GPU run shows it right and faster. Asked for in fp32 mode it is refused, not ignored: the user asked
    // for bf16 storage and would otherwise get an fp32 run's memory and speed without a word. Checked before
    // anything is allocated, since a constructor that throws frees nothing.
    const std::string& acts = variants.activations;
    ZT_CHECK(acts == "auto" || acts == "fp32" || acts == "bf16" || acts == "bf16_residual",
             "--cuda_activations {}: expected auto, fp32, bf16 or bf16_residual", acts);
    ZT_CHECK(acts == "auto" || acts == "fp32" || bf16,
             "--cuda_activations {} needs --dtype bf16 (fp32 mode keeps every activation in fp32); drop the flag or "
             "add --dtype bf16",
             acts);
    bf16_activations_ = acts == "bf16" || acts == "bf16_residual";
    // bf16_residual: the residual stream and its gradient too (sums over every block; measured, not assumed:
    // docs/performance.md, "The fp32 residual").
    residual_bf16_ = acts == "bf16_residual";
    // The other switches are checked before anything is allocated too (a constructor that throws frees nothing).
    // --cuda_epilogues on folds GELU, its derivative and the bias gradients into the cuBLASLt products; auto is off
    // until a GPU run shows it right and faster (docs/performance.md).
    ZT_CHECK(variants.epilogues == "auto" || variants.epilogues == "on" || variants.epilogues == "off",
             "--cuda_epilogues {}: expected auto, on or off", variants.epilogues);
    // bf16 mode runs attention on the tensor cores; --cuda_attention fp32 keeps the fp32 kernels (to compare).
    attention_tensor_cores_ = bf16 && !variant_choice(variants.attention, "fp32", "ZT_CUDA_ATTENTION", "auto", "fp32",
                                                      "auto (tensor cores in bf16 mode) or fp32");
    // --cuda_attention fa2: the tensor cores run the FlashAttention-2-style kernels; fp32 mode keeps its fp32 kernels.
    attention_fa2_ = attention_tensor_cores_ && variants.attention == "fa2";
    // --cuda_attention_dkv_blocks 3 runs the tensor-core dK/dV kernel built for 3 blocks an SM (fewer registers, the
    // same source): a tuning choice the GPU check measures.
    attention_dkv_capped_ = variant_choice(variants.attention_dkv_blocks, "3", "ZT_CUDA_ATTENTION_DKV_BLOCKS", "auto",
                                           "3", "auto (the compiler's register choice) or 3");
    // bf16 mode keeps bf16 copies of the parameters and activations it is asked to; --cuda_param_copy off rounds per
    // matmul instead (the same bits: the tests compare the two).
    param_copies_on_ =
        bf16 && !variant_choice(variants.param_copy, "off", "ZT_CUDA_PARAM_COPY", "1", "0", "1 (default) or 0");
    ZT_CUDA_CHECK(cudaSetDevice(device));
    ZT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // The error flag lives in mapped pinned memory: kernels set it, the host reads it after a synchronize with no
    // extra copy.
    ZT_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&error_flag_host_), sizeof(int), cudaHostAllocMapped));
    *error_flag_host_ = 0;
    ZT_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&error_flag_device_), error_flag_host_, 0));
    ZT_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&norm_host_), sizeof(double)));
    matmul_ = std::make_unique<cuda::MatmulContext>(bf16, variants.epilogues == "on");
  }

  ~CudaBackend() override {
    // No throwing from a destructor: errors here leave nothing to clean up that the process exit does not.
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (auto& kv : kept_copies_)
      if (kv.second.owns_copy) cudaFree(kv.second.copy);
    for (auto& kv : held_views_) munmap(reinterpret_cast<void*>(kv.first), kv.second * sizeof(float));
    matmul_.reset();
    if (norm_host_ != nullptr) cudaFreeHost(norm_host_);
    if (error_flag_host_ != nullptr) cudaFreeHost(error_flag_host_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }
  bool host_memory() const override { return false; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }

  float* alloc(size_t n) override { return static_cast<float*>(alloc_zeroed(n * sizeof(float))); }
  int32_t* alloc_int(size_t n) override { return static_cast<int32_t*>(alloc_zeroed(n * sizeof(int32_t))); }
  void release(void* p) override {
    if (p == nullptr) return;
    ZT_CUDA_CHECK(cudaStreamSynchronize(stream_));  // work in flight may still use it
    const auto view = held_views_.find(reinterpret_cast<uintptr_t>(p));
    if (view != held_views_.end()) {  // a held region (alloc_held_bf16): its bf16 values, then its reserved addresses
      const auto kept = kept_copies_.find(view->first);
      __nv_bfloat16* values = kept->second.copy;
      kept_copies_.erase(kept);
      ZT_CUDA_CHECK(cudaFree(values));
      munmap(p, view->second * sizeof(float));
      held_views_.erase(view);
      return;
    }
    const auto it = alloc_bytes_.find(reinterpret_cast<uintptr_t>(p));
    if (it != alloc_bytes_.end()) {
      // Forget what was recorded about ranges inside it: host copies of uploaded tokens, kept parameter copies.
      const uintptr_t begin = it->first, end = begin + it->second;
      host_tokens_.forget(begin, end);
      for (auto c = kept_copies_.lower_bound(begin); c != kept_copies_.end() && c->first < end;) {
        if (c->second.owns_copy) ZT_CUDA_CHECK(cudaFree(c->second.copy));
        c = kept_copies_.erase(c);
      }
      alloc_bytes_.erase(it);
    }
    ZT_CUDA_CHECK(cudaFree(p));
  }
  void zero(float* p, size_t n) override {
    if (n == 0) return;
    if (__nv_bfloat16* held = held_bf16(p, n)) {  // bf16 zero is all zero bits too
      ZT_CUDA_CHECK(cudaMemsetAsync(held, 0, n * sizeof(*held), stream_));
      return;
    }
    // A kept copy stays current (bf16 zero is all zero bits too): the residual gradient is zeroed, then accumulated.
    __nv_bfloat16* copy = bf16_copy_of(p, n);
    ZT_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), stream_));
    if (copy != nullptr) ZT_CUDA_CHECK(cudaMemsetAsync(copy, 0, n * sizeof(*copy), stream_));
  }
  void copy(float* dst, const float* src, size_t n) override {
    if (dst == src || n == 0) return;
    __nv_bfloat16 *src16 = held_bf16(src, n), *dst16 = held_bf16(dst, n);
    if (src16 != nullptr && dst16 != nullptr)
      ZT_CUDA_CHECK(cudaMemcpyAsync(dst16, src16, n * sizeof(*dst16), cudaMemcpyDeviceToDevice, stream_));
    else if (src16 != nullptr)
      cuda::cast_to_fp32(dst, src16, n, stream_);
    else if (dst16 != nullptr)
      cuda::cast_to_bf16(dst16, src, n, stream_);
    else
      ZT_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
  void to_host(float* host_dst, const float* src, size_t n) override {
    if (n == 0) return synchronize();
    if (const __nv_bfloat16* src16 = held_bf16(src, n)) {  // widened on the device, then copied
      float* wide = scratch_floats(n);
      cuda::cast_to_fp32(wide, src16, n, stream_);
      src = wide;
    }
    ZT_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    synchronize();
  }
  void from_host(float* dst, const float* host_src, size_t n) override {
    if (n == 0) return;
    __nv_bfloat16* dst16 = held_bf16(dst, n);
    float* staged = dst16 != nullptr ? scratch_floats(n) : dst;  // rounded on the device after the upload
    // From pageable memory the call returns once the bytes are staged, so the caller may reuse host_src at once.
    ZT_CUDA_CHECK(cudaMemcpyAsync(staged, host_src, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
    if (dst16 != nullptr) cuda::cast_to_bf16(dst16, staged, n, stream_);
  }
  void tokens_from_host(int32_t* dst, const int32_t* host_src, size_t n) override {
    if (n == 0) return;
    ZT_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    host_tokens_.record(dst, host_src, n);  // the embedding backward groups rows by token on the host
  }
  size_t param_copy_bytes() const override { return param_copies_on_ ? sizeof(__nv_bfloat16) : 0; }
  void keep_param_copy(const float* params, size_t n) override { keep_copy(params, n, false); }
  void keep_activation_copy(const float* act, size_t n, bool fp32_read) override { keep_copy(act, n, !fp32_read); }
  bool keep_activation_bf16(const float* act, size_t n) override {
    if (!bf16_activations_ || n == 0) return false;
    size_t offset = 0;
    ZT_CHECK(!place(act, n, &offset).overlaps, "holding [{}, +{}) in bf16: it overlaps a range already kept",
             static_cast<const void*>(act), n);
    // The bf16 values live in the first half of the range's own fp32 memory: no allocation, and the copies this
    // replaces are saved. Rounded through scratch, since rounding in place would overwrite values not yet read.
    auto* held = reinterpret_cast<__nv_bfloat16*>(const_cast<float*>(act));
    auto* rounded = reinterpret_cast<__nv_bfloat16*>(scratch_floats((n + 1) / 2));
    cuda::cast_to_bf16(rounded, act, n, stream_);
    ZT_CUDA_CHECK(cudaMemcpyAsync(held, rounded, n * sizeof(*held), cudaMemcpyDeviceToDevice, stream_));
    kept_copies_[reinterpret_cast<uintptr_t>(act)] = {n, held, true, true, false};
    return true;
  }
  float* alloc_held_bf16(size_t n) override {
    if (!bf16_activations_ || n == 0) return nullptr;
    // The range's fp32 addresses name it and nothing else: reserved host address space with no access and no
    // memory (never device memory, which unified addressing keeps apart), so an op that forgot the range is held
    // faults at once instead of reading or writing something. Its values: n bf16 of device memory, zeroed.
    void* view = mmap(nullptr, n * sizeof(float), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    ZT_CHECK(view != MAP_FAILED, "reserving {} bytes of address space for activations held in bf16: {}",
             n * sizeof(float), std::strerror(errno));
    void* values = nullptr;
    const cudaError_t rc = cudaMalloc(&values, n * sizeof(__nv_bfloat16));
    if (rc != cudaSuccess) munmap(view, n * sizeof(float));
    ZT_CHECK(rc == cudaSuccess, "out of device memory allocating {} bytes of bf16 activations on CUDA device {}: {}",
             n * sizeof(__nv_bfloat16), device_, cudaGetErrorString(rc));
    ZT_CUDA_CHECK(cudaMemsetAsync(values, 0, n * sizeof(__nv_bfloat16), stream_));
    const auto at = reinterpret_cast<uintptr_t>(view);
    kept_copies_[at] = {n, static_cast<__nv_bfloat16*>(values), true, true, true};
    held_views_[at] = n;
    return static_cast<float*>(view);
  }
  bool holds_residual_bf16() const override { return residual_bf16_; }
  void refresh_param_copy(const float* params, size_t n) override {
    if (!param_copies_on_ || n == 0) return;
    __nv_bfloat16* copy = bf16_copy_of(params, n);
    ZT_CHECK(copy != nullptr, "refresh_param_copy: [{}, +{}) is not inside a kept range",
             static_cast<const void*>(params), n);
    cuda::cast_to_bf16(copy, params, n, stream_);
  }

  void synchronize() override {
    ZT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (*error_flag_host_ != 0) {
      *error_flag_host_ = 0;
      ZT_FAIL("softmax_cross_entropy: a target was outside [0, vocab) (its loss is NaN)");
    }
  }

  void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T,
                         int C) override {
    __nv_bfloat16* out16 = held_bf16(out, size_t(B) * T * C);
    cuda::embedding_forward(out16 != nullptr ? nullptr : out, out16, tokens, wte, wpe, B, T, C, stream_);
  }
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T,
                          int C) override {
    const int n = B * T;
    const cuda::ActIn dout_in = act_in(dout, size_t(n) * C);
    const int32_t* host = host_tokens_.find(tokens, size_t(n));
    const int n_buckets = cuda::build_token_buckets(host, n, bucket_host_);
    const size_t n_bytes = bucket_host_.size() * sizeof(int32_t);
    void* staging = bucket_staging_.get(n_bytes);
    std::copy(bucket_host_.begin(), bucket_host_.end(), static_cast<int32_t*>(staging));
    auto* packed = static_cast<int32_t*>(bucket_device_.get(n_bytes));
    ZT_CUDA_CHECK(cudaMemcpyAsync(packed, staging, n_bytes, cudaMemcpyHostToDevice, stream_));
    bucket_staging_.record(stream_);
    cuda::embedding_backward(dwte, dwpe, dout_in, cuda::token_buckets_view(packed, n, n_buckets), B, T, C, stream_);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                         int N, int C) override {
    const OutputTargets o = output_targets(out, size_t(N) * C);
    cuda::layernorm_forward(o.fp32, o.copy, mean, rstd, act_in(inp, size_t(N) * C), weight, bias, N, C, stream_);
  }
  void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a, const float* b,
                                  const float* weight, const float* bias, int N, int C) override {
    const size_t n = size_t(N) * C;
    const OutputTargets o = output_targets(out, n);
    __nv_bfloat16* res16 = held_bf16(res, n);  // the residual stream held in bf16 (bf16_residual)
    cuda::residual_layernorm_forward(res16 != nullptr ? nullptr : res, res16, o.fp32, o.copy, mean, rstd, act_in(a, n),
                                     act_in(b, n), weight, bias, N, C, stream_);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, const float* mean, const float* rstd, int N, int C) override {
    // dinp is accumulated: read and written in fp32 (its kept copy written too), or, held in bf16 (bf16_residual),
    // read, added to and rounded there.
    const size_t n = size_t(N) * C;
    for (const float* g : {dweight, dbias}) fp32_out(g, size_t(C));
    float* scratch = scratch_floats(cuda::layernorm_backward_scratch_elems(N, C));
    cuda::layernorm_backward(unheld(dinp, n), bf16_copy_of(dinp, n), dweight, dbias, act_in(dout, n), act_in(inp, n),
                             weight, mean, rstd, N, C, scratch, stream_);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC,
                      bool wt) override {
    // An out held in bf16 is written by the product in bf16 (the bias's kept copy in the epilogue).
    cuda::matmul_forward(*matmul_, out, held_bf16(out, size_t(N) * OC), inp, bf16_copy_of(inp, size_t(N) * C), weight,
                         bf16_copy_of(weight, size_t(C) * OC), bias, bias_copy(bias, OC), N, C, OC, wt, stream_);
  }
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int N, int C, int OC, bool wt) override {
    // A dout held in bf16 has no fp32 values: the bias gradient sums its bf16 ones. A dinp held in bf16 is written
    // by the product in bf16.
    const size_t n_dout = size_t(N) * OC;
    __nv_bfloat16* dinp16 = dinp != nullptr ? held_bf16(dinp, size_t(N) * C) : nullptr;
    cuda::matmul_backward(*matmul_, dinp, dinp16, dweight, dbias, unheld(dout, n_dout), bf16_copy_of(dout, n_dout), inp,
                          bf16_copy_of(inp, size_t(N) * C), weight, bf16_copy_of(weight, size_t(C) * OC), N, C, OC, wt,
                          stream_);
  }
  void matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight, const float* bias, int N,
                           int C, int OC) override {
    const size_t n = size_t(N) * OC;
    const OutputTargets o = output_targets(out, n);
    __nv_bfloat16* pre16 = held_bf16(pre, n);
    // A held out is the bf16 values' own memory: where the GELU epilogue writes it in fp32 (pre not held), that
    // output goes to scratch, then is rounded.
    if (held_bf16(out, n) != nullptr && pre16 == nullptr && matmul_->epilogues()) out = scratch_floats(n);
    cuda::matmul_gelu_forward(*matmul_, pre, pre16, out, o.fp32 != nullptr, o.copy, inp,
                              bf16_copy_of(inp, size_t(N) * C), weight, bf16_copy_of(weight, size_t(C) * OC), bias,
                              bias_copy(bias, OC), N, C, OC, stream_);
  }
  void matmul_gelu_backward(float* dpre, float* dact, float* dweight, float* dbias, const float* dout, const float* inp,
                            const float* weight, const float* pre, int N, int C, int OC) override {
    const size_t n = size_t(N) * C;
    const OutputTargets o = backward_targets(dpre, n);
    __nv_bfloat16 *dact16 = held_bf16(dact, n), *pre16 = held_bf16(pre, n);
    cuda::matmul_gelu_backward(*matmul_, o.fp32, o.copy, dact16 != nullptr ? nullptr : dact, dact16, dweight, dbias,
                               unheld(dout, size_t(N) * OC), bf16_copy_of(dout, size_t(N) * OC), inp,
                               bf16_copy_of(inp, n), weight, bf16_copy_of(weight, size_t(C) * OC),
                               pre16 != nullptr ? nullptr : pre, pre16, N, C, OC, stream_);
  }
  size_t attention_state_elems(int B, int T, int C, int NH) const override {
    return cuda::attention_state_elems(B, T, C, NH, attention_tensor_cores_);
  }
  // qkv and dout held in bf16 are read as they are by the tensor-core kernels; the fp32 kernels (other head sizes)
  // read them widened into scratch.
  void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) override {
    const OutputTargets o = output_targets(out, size_t(B) * T * C);
    const size_t n_qkv = size_t(B) * T * 3 * C;
    const __nv_bfloat16* qkv16 = held_bf16(qkv, n_qkv);
    if (qkv16 != nullptr && !cuda::attention_reads_bf16(C, NH, attention_tensor_cores_)) {
      qkv = widened(qkv16, n_qkv, 0);
      qkv16 = nullptr;
    }
    cuda::attention_forward(o.fp32, o.copy, att, qkv, qkv16, B, T, C, NH, attention_tensor_cores_, attention_fa2_,
                            stream_);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, int B, int T, int C,
                          int NH) override {
    const size_t n_qkv = size_t(B) * T * 3 * C, n_out = size_t(B) * T * C;
    const __nv_bfloat16* qkv16 = held_bf16(qkv, n_qkv);
    cuda::ActIn dout_in = act_in(dout, n_out);
    if (!cuda::attention_reads_bf16(C, NH, attention_tensor_cores_)) {
      widen_.get((n_qkv + n_out) * sizeof(float));  // room for both first: a later get() that grows moves the block
      if (qkv16 != nullptr) qkv = widened(qkv16, n_qkv, 0);
      if (dout_in.b16 != nullptr) dout_in = widened(dout_in.b16, n_out, n_qkv);
      qkv16 = nullptr;
    }
    float* scratch = scratch_floats(cuda::attention_backward_scratch_elems(B, T, C, NH, attention_tensor_cores_));
    const OutputTargets o = backward_targets(dqkv, n_qkv);
    cuda::attention_backward(o.fp32, o.copy, dout_in, qkv, qkv16, att, B, T, C, NH, attention_tensor_cores_,
                             attention_dkv_capped_, attention_fa2_, scratch, stream_);
  }
  bool supports_attention_cached() const override { return false; }
  void attention_cached(float*, float*, float*, const float*, int, int, int, int, int, int) override {
    ZT_FAIL(
        "attention_cached (generation with a KV cache) is not supported on cuda yet; run `zerotrain sample` with "
        "--device cpu, or with --no_kv_cache");
  }
  void gelu_forward(float* out, const float* inp, size_t n) override {
    const OutputTargets o = output_targets(out, n);
    cuda::gelu_forward(o.fp32, o.copy, act_in(inp, n), n, stream_);
  }
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) override {
    const OutputTargets o = backward_targets(dinp, n);
    cuda::gelu_backward(o.fp32, o.copy, act_in(inp, n), act_in(dout, n), n, stream_);
  }
  void residual_forward(float* out, const float* a, const float* b, size_t n) override {
    fp32_out(out, n);
    cuda::residual_forward(out, fp32_in(a, n), fp32_in(b, n), n, stream_);
  }
  void softmax_cross_entropy(float* logits, float* losses, const int32_t* targets, int N, int V, int Vp,
                             float dloss) override {
    // Logits held in bf16 are read there and replaced there by their gradient (rounded), in place.
    const size_t n = size_t(N) * Vp;
    const OutputTargets o = output_targets(logits, n);
    cuda::softmax_cross_entropy(act_in(logits, n), o.fp32, o.copy, losses, targets, N, V, Vp, dloss, error_flag_device_,
                                stream_);
  }
  void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                    float eps, float wd, float grad_scale, int64_t step) override {
    cuda::adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, wd, grad_scale, step, bf16_copy_of(param, n),
                       stream_);
  }
  double squared_norm(const float* x, size_t n) override {
    auto* scratch = static_cast<double*>(scratch_.get(cuda::squared_norm_scratch_elems(n) * sizeof(double)));
    cuda::squared_norm(x, n, scratch, stream_);
    ZT_CUDA_CHECK(cudaMemcpyAsync(norm_host_, scratch, sizeof(double), cudaMemcpyDeviceToHost, stream_));
    synchronize();
    return *norm_host_;
  }
  void accumulate(float* x, const float* y, size_t n) override { cuda::residual_forward(x, x, y, n, stream_); }

 private:
  // One kept range (of parameters or activations): its copy, and whether only the copy needs writing
  // (keep_activation_copy with fp32_read false). held: a range held in bf16 only, whose copy is all there is of it
  // (keep_activation_bf16: in the range's own memory; alloc_held_bf16: in memory of its own). owns_copy: the copy
  // is a cudaMalloc of its own, freed with the range.
  struct KeptCopy {
    size_t n;
    __nv_bfloat16* copy;
    bool fp32_unread;
    bool held = false;
    bool owns_copy = true;
  };

  // Where [p, p + n) (n > 0) stands against the kept ranges: the one that holds all of it (null if none; *offset is
  // p's element offset in it), and whether it overlaps any kept range at all.
  struct Placement {
    const KeptCopy* inside;
    bool overlaps;
  };
  Placement place(const float* p, size_t n, size_t* offset) const {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(p), end = addr + n * sizeof(float);
    auto it = kept_copies_.upper_bound(addr);  // the first kept range starting after addr
    Placement at{nullptr, it != kept_copies_.end() && it->first < end};
    if (it != kept_copies_.begin()) {
      --it;  // the last kept range starting at or before addr
      const uintptr_t kept_end = it->first + it->second.n * sizeof(float);
      if (addr < kept_end) at.overlaps = true;
      if (end <= kept_end && (addr - it->first) % sizeof(float) == 0) {
        at.inside = &it->second;
        *offset = (addr - it->first) / sizeof(float);
      }
    }
    return at;
  }

  void keep_copy(const float* params, size_t n, bool fp32_unread) {
    if (!param_copies_on_ || n == 0) return;
    size_t offset = 0;
    ZT_CHECK(!place(params, n, &offset).overlaps, "keeping a bf16 copy of [{}, +{}): it overlaps a range already kept",
             static_cast<const void*>(params), n);
    void* copy = nullptr;
    const cudaError_t rc = cudaMalloc(&copy, n * sizeof(__nv_bfloat16));
    ZT_CHECK(rc == cudaSuccess, "out of device memory allocating a {}-byte bf16 copy on CUDA device {}: {}",
             n * sizeof(__nv_bfloat16), device_, cudaGetErrorString(rc));
    kept_copies_[reinterpret_cast<uintptr_t>(params)] = {n, static_cast<__nv_bfloat16*>(copy), fp32_unread};
    cuda::cast_to_bf16(static_cast<__nv_bfloat16*>(copy), params, n, stream_);
  }

  void* alloc_zeroed(size_t n_bytes) {
    void* p = nullptr;
    const cudaError_t rc = cudaMalloc(&p, n_bytes == 0 ? 256 : n_bytes);
    ZT_CHECK(rc == cudaSuccess, "out of device memory allocating {} bytes on CUDA device {}: {}", n_bytes, device_,
             cudaGetErrorString(rc));
    // Zeroed like the CPU backend's memory, in stream order before any op that uses it.
    ZT_CUDA_CHECK(cudaMemsetAsync(p, 0, n_bytes == 0 ? 256 : n_bytes, stream_));
    alloc_bytes_[reinterpret_cast<uintptr_t>(p)] = n_bytes;
    return p;
  }

  float* scratch_floats(size_t n) { return static_cast<float*>(scratch_.get(n * sizeof(float))); }

  // The kept range (of parameters or activations: one map) that holds all of [p, p + n), or null when none
  // overlaps it; *offset is p's element offset in it. A range that overlaps kept memory without lying inside one
  // kept range is an error: the op would leave a copy stale, or read one only in part.
  const KeptCopy* kept_range_of(const float* p, size_t n, size_t* offset) const {
    if (kept_copies_.empty() || n == 0) return nullptr;
    const Placement at = place(p, n, offset);
    ZT_CHECK(at.inside != nullptr || !at.overlaps,
             "[{}, +{}) overlaps a bf16 copy's range but is not inside a kept range (the copy would go stale)",
             static_cast<const void*>(p), n);
    return at.inside;
  }
  // The kept bf16 copy of [p, p + n), or null.
  __nv_bfloat16* bf16_copy_of(const float* p, size_t n) const {
    size_t offset = 0;
    const KeptCopy* kept = kept_range_of(p, n, &offset);
    return kept != nullptr ? kept->copy + offset : nullptr;
  }
  // The bf16 values of [p, p + n) when it lies in a range held in bf16 only, else null (ranges kept with a copy
  // beside their fp32 values do not matter here: a transfer may cover them in part, as before). Covering a held
  // range in part is refused: that part has no fp32 values to move.
  __nv_bfloat16* held_bf16(const float* p, size_t n) const {
    if (!bf16_activations_ || n == 0) return nullptr;
    const uintptr_t addr = reinterpret_cast<uintptr_t>(p), end = addr + n * sizeof(float);
    auto it = kept_copies_.upper_bound(addr);
    if (it != kept_copies_.begin()) --it;
    for (; it != kept_copies_.end() && it->first < end; ++it) {
      const uintptr_t kept_end = it->first + it->second.n * sizeof(float);
      if (!it->second.held || kept_end <= addr) continue;
      ZT_CHECK(it->first <= addr && end <= kept_end && (addr - it->first) % sizeof(float) == 0,
               "[{}, +{}) covers part of a range held in bf16 (--cuda_activations bf16); use the whole range or a "
               "part inside it",
               static_cast<const void*>(p), n);
      return it->second.copy + (addr - it->first) / sizeof(float);
    }
    return nullptr;
  }
  // p, or null where [p, p + n) is held in bf16 only (it has no fp32 values to read or write).
  template <typename T>
  T* unheld(T* p, size_t n) const {
    return held_bf16(p, n) != nullptr ? nullptr : p;
  }
  // An op's input with a bf16 path: the held bf16 values, else the fp32 ones.
  cuda::ActIn act_in(const float* p, size_t n) const {
    if (const __nv_bfloat16* held = held_bf16(p, n)) return held;
    return p;
  }
  // The bias's kept bf16 copy (a product into a held range adds it in bf16), or null.
  const void* bias_copy(const float* bias, int n) const {
    return bias != nullptr ? bf16_copy_of(bias, size_t(n)) : nullptr;
  }
  // Held bf16 values widened to fp32 for a kernel that reads fp32 only, at float offset `at` of the widening scratch
  // (an op that needs two carves them apart, getting room for both first).
  const float* widened(const __nv_bfloat16* held, size_t n, size_t at) {
    auto* wide = static_cast<float*>(widen_.get((at + n) * sizeof(float))) + at;
    cuda::cast_to_fp32(wide, held, n, stream_);
    return wide;
  }
  // An op's fp32 input or output without a bf16 path: refused in a held range (its fp32 values do not exist).
  const float* fp32_in(const float* p, size_t n) const {
    ZT_CHECK(held_bf16(p, n) == nullptr,
             "[{}, +{}) is held in bf16 (--cuda_activations bf16), but this op reads it in fp32 only; hold it in fp32",
             static_cast<const void*>(p), n);
    return p;
  }
  void fp32_out(const float* p, size_t n) const {
    ZT_CHECK(held_bf16(p, n) == nullptr,
             "[{}, +{}) is held in bf16 (--cuda_activations bf16), but this op writes it in fp32 only; hold it in fp32",
             static_cast<const void*>(p), n);
  }
  // Where an op writes its output [p, p + n): the fp32 values to p, or nowhere (null) when the range is kept with
  // fp32_read false (only its copy is read); the rounded values to the kept copy, or nowhere.
  struct OutputTargets {
    float* fp32;
    __nv_bfloat16* copy;
  };
  OutputTargets output_targets(float* p, size_t n) const {
    size_t offset = 0;
    const KeptCopy* kept = kept_range_of(p, n, &offset);
    if (kept == nullptr) return {p, nullptr};
    return {kept->fp32_unread ? nullptr : p, kept->copy + offset};
  }
  // A backward op's output: the fp32 values are skipped only in a range held in bf16 (the contract lets a copy-only
  // range skip the forward ops' fp32 writes alone).
  OutputTargets backward_targets(float* p, size_t n) const { return {unheld(p, n), bf16_copy_of(p, n)}; }

  int device_;
  bool attention_tensor_cores_ = false;
  bool attention_dkv_capped_ = false;
  bool attention_fa2_ = false;
  bool param_copies_on_ = false;
  bool bf16_activations_ = false;
  bool residual_bf16_ = false;
  std::map<uintptr_t, KeptCopy> kept_copies_;  // start of a kept fp32 range -> its bf16 copy
  std::map<uintptr_t, size_t> held_views_;     // alloc_held_bf16's reserved ranges -> their floats
  std::map<uintptr_t, size_t> alloc_bytes_;    // every buffer from alloc / alloc_int and its size in bytes
  cudaStream_t stream_ = nullptr;
  int* error_flag_host_ = nullptr;
  int* error_flag_device_ = nullptr;
  double* norm_host_ = nullptr;
  std::unique_ptr<cuda::MatmulContext> matmul_;
  cuda::DeviceScratch scratch_;  // per-op scratch: ops run in stream order, so one block serves them all
  cuda::DeviceScratch widen_;    // held bf16 inputs widened for the fp32 attention kernels
  cuda::DeviceScratch bucket_device_;
  cuda::PinnedStaging bucket_staging_;
  std::vector<int32_t> bucket_host_;
  cuda::HostTokenCopies host_tokens_;  // what tokens_from_host uploaded where
};

}  // namespace

namespace cuda {

cudaStream_t backend_stream(Backend& backend) {
  auto* cuda_backend = dynamic_cast<CudaBackend*>(&unwrap_graph_backend(backend));
  ZT_CHECK(cuda_backend != nullptr, "a device-memory comm needs the CUDA backend, got the '{}' backend",
           backend.name());
  return cuda_backend->stream();
}

int backend_device(Backend& backend) {
  auto* cuda_backend = dynamic_cast<CudaBackend*>(&unwrap_graph_backend(backend));
  ZT_CHECK(cuda_backend != nullptr, "a device-memory comm needs the CUDA backend, got the '{}' backend",
           backend.name());
  return cuda_backend->device();
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int device, bool bf16, const CudaVariants& variants) {
  const bool graphs = cuda::graphs_on(variants.graphs);  // --cuda_graphs: checked before the device is touched
  auto backend = std::make_unique<CudaBackend>(device, bf16, variants);
  if (!graphs) return backend;
  const cudaStream_t stream = backend->stream();
  return cuda::make_graph_backend(std::move(backend), stream);
}

}  // namespace zt
