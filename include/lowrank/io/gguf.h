#pragma once
// GGUF, llama.cpp's model file (version 3): a validated memory-mapped reader and an atomic
// streaming writer.
// Layout, little-endian: "GGUF", u32 version, u64 tensor count, u64 key count; the keys (string
// key, u32 value type, value; a string is u64 length + bytes, an array u32 element type + u64
// count + elements); the tensor infos (name, u32 dims, u64 ne[dims] innermost first — a row-major
// [out, in] weight is ne = {in, out} —, u32 ggml type, u64 offset into the data section); padding
// to the alignment (key general.alignment, default 32); the data section, each tensor at the
// running offset rounded up to the alignment (ggml's reader insists on exactly that packing).
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::io {

enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7, String = 8,
  Array = 9, U64 = 10, I64 = 11, F64 = 12,
};

// One metadata value: a scalar, or an array of one scalar type (GGUF allows arrays of arrays;
// nothing lowrank or llama.cpp reads uses them, and the reader refuses them).
struct GgufValue {
  GgufValueType type = GgufValueType::U32;
  GgufValueType element = GgufValueType::U32;  // arrays only
  int64_t integer = 0;                          // integer and bool scalars (u64 as its bits)
  double real = 0;                              // F32, F64
  std::string text;                             // String
  std::vector<int64_t> integers;                // arrays of integers or bools
  std::vector<double> reals;                    // arrays of F32 / F64
  std::vector<std::string> texts;               // arrays of strings

  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue string_array(std::vector<std::string> v);
  static GgufValue i32_array(const std::vector<int32_t>& v);
  static GgufValue f32_array(const std::vector<float>& v);

  bool is_integer() const;  // an integer scalar of any width
  size_t array_size() const;
  // A short rendering for `lowrank inspect`: scalars in full, arrays as "[n × type] first…".
  std::string str(size_t max_items = 4) const;
};
std::string_view gguf_value_type_name(GgufValueType t);

// ggml's tensor types (ggml.h). lowrank writes F32, F16, BF16 and Q8_0 and decodes those; the
// reader knows every type's block size so that it can check any file's layout.
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };
// "f32", "q4_K", ...; "type <n>" for an id ggml does not have.
std::string ggml_type_name(uint32_t type);
// Bytes of `numel` elements of `type` whose innermost dimension is `ne0`; throws Error when ne0
// is no multiple of the type's block or the type is unknown.
uint64_t ggml_row_bytes(uint32_t type, int64_t ne0);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // innermost first (ggml's order)
  uint32_t type = 0;
  uint64_t offset = 0;      // into the data section
  uint64_t bytes = 0;
  Shape shape() const;      // row-major: ne reversed
};

class GgufFile {
 public:
  // Maps and validates `path`; throws Error("<path>: ...") on anything malformed.
  static GgufFile open(const std::string& path);
  // Validates an in-memory copy of a whole file (the fuzzer and tests).
  static GgufFile from_bytes(std::string bytes, const std::string& name = "<memory>");

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;  // nullptr if absent
  // Typed lookups that throw Error naming the key when it is absent or of another type.
  std::string get_string(std::string_view key) const;
  int64_t get_integer(std::string_view key) const;
  double get_real(std::string_view key) const;
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }  // in file order
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  // The tensor's values as f32 in row-major order (shape: ne reversed): F32, F16, BF16 and Q8_0
  // are decoded; another type is an Error naming it.
  Tensor get_f32(std::string_view name) const;

 private:
  static GgufFile parse(std::string path, std::shared_ptr<void> owner, const char* bytes,
                        uint64_t size);

  std::string path_;
  std::shared_ptr<void> mapping_;
  const char* data_ = nullptr;  // start of the data section
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

// Collects keys and tensors, then writes the whole file atomically. Tensors are held as given
// (views share storage) and converted a block of rows at a time while writing.
class GgufWriter {
 public:
  // Sets `key` (a new key goes after the others; an existing one keeps its place).
  void set(const std::string& key, GgufValue value);
  // `t`: CPU, a float dtype, row-major; written with ne = its shape reversed, as `type`. Q8_0
  // needs the innermost dimension to be a multiple of 32. Throws Error for a name of 64 bytes or
  // more (ggml's limit) or a name given twice.
  void add_tensor(const std::string& name, Tensor t, GgmlType type);
  // Writes the file (temporary file, fsync, rename). A failure leaves nothing behind.
  // `progress(bytes written, bytes in all)` after each tensor, when given.
  void write(const std::string& path, const std::function<void(int64_t, int64_t)>& progress = {}) const;

  size_t tensor_count() const { return tensors_.size(); }

 private:
  struct Entry {
    std::string name;
    Tensor tensor;
    GgmlType type;
  };
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<Entry> tensors_;
};

// ggml's Q8_0 of one row (n a multiple of 32): per block of 32 values a f16 scale d = max|x| / 127
// and 32 int8 codes roundf(x / d) (as quantize_row_q8_0_ref); `out` holds n / 32 · 34 bytes.
void quantize_q8_0(const float* x, int64_t n, uint8_t* out);
void dequantize_q8_0(const uint8_t* in, int64_t n, float* y);

}  // namespace lowrank::io
