// The CUDA backend's entry points: device count, description and the factory. No CUDA headers, so the CLI and the
// tests include it from plain C++.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/backend.hpp"

namespace zt {

/// Number of CUDA devices; 0, never an exception, when there is no driver, no device, or the runtime fails.
int cuda_device_count();
/// One line for logs: "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)"; throws zt::Error for a bad index.
std::string cuda_device_description(int device);
/// Bytes of the current device's memory in use (total minus free, every process's and the driver's included).
size_t cuda_device_memory_used();
/// Kernel variants, as the --cuda_attention, --cuda_attention_dkv_blocks and --cuda_param_copy flags give them:
/// "auto" takes the deprecated ZT_CUDA_ATTENTION / ZT_CUDA_ATTENTION_DKV_BLOCKS / ZT_CUDA_PARAM_COPY variable when
/// set (for one release), else the default (tensor-core attention, the compiler's register choice, bf16 copies kept).
struct CudaVariants {
  std::string attention = "auto";             ///< auto, fp32 or fa2 (auto: the deprecated variable, auto or fp32)
  std::string attention_dkv_blocks = "auto";  ///< auto or 3
  std::string param_copy = "auto";            ///< auto, on or off
  std::string epilogues = "auto";             ///< auto (off for now), on or off: --cuda_epilogues
  std::string activations = "auto";           ///< auto (fp32 for now), fp32, bf16, bf16_residual: --cuda_activations
  std::string graphs = "auto";                ///< auto (off for now), on or off: --cuda_graphs
};

/// The CUDA backend on `device` (the calling thread's current device from then on; use the backend from that thread).
/// Every interface buffer is fp32 device memory in both modes. bf16 = false: fp32 everywhere, matmuls in true fp32
/// (no TF32): the mode the tests compare with the CPU. bf16 = true: matmul operands are rounded into internal bf16
/// copies (or the kept copies: keep_param_copy, keep_activation_copy) and multiplied with fp32 accumulation into the
/// fp32 outputs; every other op, and the fp32 master weights, optimizer state and gradients, stay fp32; with
/// activations "bf16" (bf16 mode only) alloc_held_bf16 gives regions held in bf16 only and keep_activation_bf16
/// holds the buffers it is asked for in bf16 inside their own fp32 memory; products write such buffers in bf16 and
/// kernels read them in bf16 (cuda/README.md lists which the model holds). Throws zt::Error when the device does not
/// exist, or for a variant it does not know or bf16 activations in fp32 mode.
std::unique_ptr<Backend> make_cuda_backend(int device, bool bf16, const CudaVariants& variants = {});

}  // namespace zt
