#include "lowrank/core/tensor.h"

#include <cstdlib>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <cstring>
#include <limits>
#include <sstream>

#include "lowrank/core/device_memory.h"

namespace lowrank {

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Device parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.rfind("cuda:", 0) == 0) {
    const std::string n = text.substr(5);
    if (!n.empty() && n.size() < 4 && n.find_first_not_of("0123456789") == std::string::npos)
      return Device::cuda(std::stoi(n));
  }
  throw error("invalid device '", text, "' (expected cpu, cuda or cuda:N)");
}

namespace {

// glibc serves blocks above a (dynamic) threshold with mmap and returns them at free, and trims
// the heap's top above another: a training step's activations (MBs to hundreds of MBs each) then
// come back as fresh pages, which the kernel faults in and zeroes on first touch — measured on a
// CPU step of the 7M model: 1.5M page faults, ~20% of the CPU time in the kernel. Keeping blocks
// under 1 GiB in the heap (reused by the next step's allocations, as a caching allocator would)
// made the step 4–17% faster, its peak RSS the same or lower. Skipped when the user tunes malloc
// through the environment.
void keep_large_blocks_in_heap() {
  for (const char* v : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"})
    if (std::getenv(v)) return;
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
#endif
}

}  // namespace

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  if (device.is_cuda()) return device_allocate(bytes, device);
  [[maybe_unused]] static const bool tuned = (keep_large_blocks_in_heap(), true);
  // 64-byte alignment for SIMD; never a null pointer, even for zero bytes.
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p) throw error("out of memory allocating ", bytes, " bytes on the CPU");
  return std::make_shared<Storage>(p, bytes, device, [](void* q) { std::free(q); });
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) throw error("negative dimension in shape ", shape_str(s));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw error("shape ", shape_str(s), " has too many elements");
    n *= d;
  }
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  LR_CHECK(shape.size() <= 4, "rank ", shape.size());
  Tensor t;
  t.numel_ = shape_numel(shape);
  // nbytes() must not wrap around (a shape read from a hostile file can ask for 2^62 elements).
  if (static_cast<uint64_t>(t.numel_) > std::numeric_limits<uint64_t>::max() / 8 / dtype_size(dtype))
    throw error("shape ", shape_str(shape), " has too many elements");
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = Storage::allocate(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape);
  t.fill_(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  Tensor t = empty(shape);
  LR_CHECK(static_cast<int64_t>(values.size()) == t.numel(), values.size(), " vs ", shape_str(shape));
  std::memcpy(t.raw(), values.data(), t.nbytes());
  return t;
}

Tensor Tensor::from_ints(const std::vector<int32_t>& values, Device device) {
  Tensor t = empty({static_cast<int64_t>(values.size())}, DType::I32, device);
  device_copy(t.raw(), device, values.data(), Device::cpu(), t.nbytes());
  return t;
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, Device device,
                    std::shared_ptr<void> owner) {
  LR_CHECK(shape.size() <= 4, "rank ", shape.size());
  Tensor t;
  t.numel_ = shape_numel(shape);
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>(data, t.nbytes(), device,
                                         [owner](void*) mutable { owner.reset(); });
  return t;
}

int64_t Tensor::dim(int i) const {
  if (i < 0) i += rank();
  LR_CHECK(i >= 0 && i < rank(), "dim ", i, " of ", str());
  return shape_[i];
}

float* Tensor::f32() const {
  LR_CHECK(dtype_ == DType::F32 && device_.is_cpu(), "expected a CPU F32 tensor, got ", str());
  return data<float>();
}

Tensor Tensor::reshape(const Shape& shape) const {
  LR_CHECK(shape_numel(shape) == numel_, "reshape ", str(), " to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  LR_CHECK(rank() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "slice ", begin, ":", end,
           " of ", str());
  Tensor t = *this;
  int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  device_copy(t.raw(), device_, raw(), device_, nbytes());
  return t;
}

Tensor Tensor::empty_like(const Tensor& like) { return empty(like.shape(), like.dtype(), like.device()); }
Tensor Tensor::zeros_like(const Tensor& like) { return zeros(like.shape(), like.dtype(), like.device()); }

namespace {
// d[i] = value(i) for i < n, over OpenMP's threads when n is large.
template <typename To, typename Value>
void write_each(void* dst, int64_t n, Value value) {
  To* d = static_cast<To*>(dst);
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) d[i] = value(i);
}
}  // namespace

void convert_floats(const void* src, DType st, void* dst, DType dt, int64_t n) {
  if (st == dt) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(st));
    return;
  }
  // The common casts (adapters to the GPU, bf16 checkpoints to the CPU's f32) in loops that
  // vectorise; the general ones below read through a switch per element.
  const auto* f32 = static_cast<const float*>(src);
  const auto* u16 = static_cast<const uint16_t*>(src);
  if (st == DType::F32 && dt == DType::BF16) return write_each<uint16_t>(dst, n, [f32](int64_t i) { return f32_to_bf16(f32[i]); });
  if (st == DType::BF16 && dt == DType::F32) return write_each<float>(dst, n, [u16](int64_t i) { return bf16_to_f32(u16[i]); });
  auto load = [&](int64_t i) -> float {
    switch (st) {
      case DType::F32: return f32[i];
      case DType::BF16: return bf16_to_f32(u16[i]);
      case DType::F16: return f16_to_f32(u16[i]);
      case DType::F64: return static_cast<float>(static_cast<const double*>(src)[i]);
      default: throw error("cannot convert ", dtype_name(st), " to a float type");
    }
  };
  switch (dt) {
    case DType::F32: return write_each<float>(dst, n, load);
    case DType::BF16: return write_each<uint16_t>(dst, n, [&](int64_t i) { return f32_to_bf16(load(i)); });
    case DType::F16: return write_each<uint16_t>(dst, n, [&](int64_t i) { return f32_to_f16(load(i)); });
    default: throw error("cannot convert to ", dtype_name(dt));
  }
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  LR_CHECK(device_.is_cpu(), "dtype conversion on ", device_.str());
  Tensor t = empty(shape_, dtype, device_);
  convert_floats(raw(), dtype_, t.raw(), dtype, numel_);
  return t;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor t = empty(shape_, dtype_, device);
  device_copy(t.raw(), device, raw(), device_, nbytes());
  return t;
}

void Tensor::fill_(float value) {
  LR_CHECK(device_.is_cpu(), "fill_ on ", device_.str());
  switch (dtype_) {
    case DType::F32: {
      float* d = data<float>();
      for (int64_t i = 0; i < numel_; ++i) d[i] = value;
      break;
    }
    case DType::BF16:
    case DType::F16: {
      uint16_t bits = dtype_ == DType::BF16 ? f32_to_bf16(value) : f32_to_f16(value);
      uint16_t* d = data<uint16_t>();
      for (int64_t i = 0; i < numel_; ++i) d[i] = bits;
      break;
    }
    default: LR_CHECK(value == 0.0f, "fill_ of ", dtype_name(dtype_));
  }
}

void Tensor::zero_() {
  if (device_.is_cuda()) {
    device_memset_zero(raw(), device_, nbytes());
    return;
  }
  std::memset(raw(), 0, nbytes());
}

float Tensor::item(int64_t i) const {
  LR_CHECK(i >= 0 && i < numel_ && device_.is_cpu(), "item ", i, " of ", str());
  float f;
  convert_floats(static_cast<const char*>(raw()) + i * dtype_size(dtype_), dtype_, &f, DType::F32, 1);
  return f;
}

std::string Tensor::str() const {
  return shape_str(shape_) + " " + std::string(dtype_name(dtype_)) + " " + device_.str();
}

}  // namespace lowrank
