#pragma once
// Which attention kernels the CUDA backend runs (for tests and benchmarks; Auto is the default):
// Auto takes cuDNN's fused SDPA where it is loadable and applies (bf16, head_dim a multiple of 8 up
// to 128; docs/cuda.md), else the tensor-core kernels where they apply (bf16, head_dim 64 or 128),
// else the generic ones. Cudnn forces cuDNN (an Error where it is unavailable or rejects the
// shape); Generic and TensorCore force our own kernels.
#include <cstdint>
#include <string>

namespace lowrank::cuda {

enum class AttentionPath { Auto, Generic, TensorCore, Cudnn };
void set_attention_path(AttentionPath p);

// Whether cuDNN's fused attention can be used in this process (libcudnn.so.9 loaded, not disabled
// by LOWRANK_CUDNN=0); when not, `why` (if given) says why. Loads the library on first call.
bool cudnn_attention_available(std::string* why = nullptr);
// The loaded cuDNN version (e.g. 91900), 0 when not loaded.
int cudnn_version();
// cuDNN attention plans built so far in this process, one per shape (each took 50–110 ms).
int64_t cudnn_attention_plans();

}  // namespace lowrank::cuda
