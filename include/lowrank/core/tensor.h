#pragma once
// Tensor: a value-semantic handle to shared storage with a dtype, a device and a shape (rank <= 4),
// contiguous row-major. Copying a Tensor shares the storage; clone() copies the bytes.
// No autograd: layers keep what their backward needs in explicit structs.
#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "lowrank/core/dtype.h"
#include "lowrank/core/error.h"

namespace lowrank {

struct Device {
  enum class Kind : uint8_t { CPU, CUDA };
  Kind kind = Kind::CPU;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {Kind::CUDA, i}; }
  bool is_cpu() const { return kind == Kind::CPU; }
  bool is_cuda() const { return kind == Kind::CUDA; }
  bool operator==(const Device&) const = default;
  std::string str() const;
};
// Parses "cpu", "cuda", "cuda:N"; throws Error naming the text otherwise.
Device parse_device(const std::string& text);

// Raw bytes owned (or borrowed, e.g. from an mmap kept alive by `owner`) by one device.
class Storage {
 public:
  using Deleter = std::function<void(void*)>;
  Storage(void* data, size_t bytes, Device device, Deleter deleter)
      : data_(data), bytes_(bytes), device_(device), deleter_(std::move(deleter)) {}
  ~Storage() {
    if (deleter_) deleter_(data_);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

  static std::shared_ptr<Storage> allocate(size_t bytes, Device device);

 private:
  void* data_;
  size_t bytes_;
  Device device_;
  Deleter deleter_;
};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);  // throws Error on negative dims or overflow

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, float value);  // f32, cpu
  // Same shape, dtype and device as `like` (dtype overridable).
  static Tensor empty_like(const Tensor& like);
  static Tensor zeros_like(const Tensor& like);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  // I32 [n] on `device` (ids, targets, positions for the device-resident ops).
  static Tensor from_ints(const std::vector<int32_t>& values, Device device = Device::cpu());
  // Wraps bytes owned elsewhere; `owner` keeps them alive as long as the tensor (or a view) lives.
  static Tensor wrap(void* data, const Shape& shape, DType dtype, Device device,
                     std::shared_ptr<void> owner);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the back
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }

  void* raw() const { return static_cast<char*>(storage_->data()) + offset_; }
  template <typename T>
  T* data() const { return static_cast<T*>(raw()); }
  float* f32() const;  // checks dtype F32 and device CPU

  // Same storage, new shape (same numel).
  Tensor reshape(const Shape& shape) const;
  // Rows [begin, end) of the first dimension; shares storage.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  Tensor clone() const;
  // Converts to another dtype (float types) on the CPU; returns *this if it already has it.
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  void fill_(float value);
  void zero_();
  // Reads element i as float (any float dtype, CPU); for tests and printing.
  float item(int64_t i) const;

  std::string str() const;  // "[2, 3] F32 cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::F32;
  Device device_;
};

// Element-wise float conversion between CPU buffers of float dtypes.
void convert_floats(const void* src, DType src_type, void* dst, DType dst_type, int64_t n);

}  // namespace lowrank
