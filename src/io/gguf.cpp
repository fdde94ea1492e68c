// GGUF reader and writer. Nothing in a file is trusted until checked: every count, length and
// offset is bounded by the bytes that remain before anything is allocated or read.
#include "lowrank/io/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>

#include "lowrank/core/error.h"
#include "lowrank/io/atomic_file.h"
#include "lowrank/io/mapped_file.h"

namespace lowrank::io {
namespace {

constexpr uint32_t kDefaultAlignment = 32;
constexpr size_t kMaxName = 64;  // GGML_MAX_NAME, the terminating NUL included
constexpr int kMaxDims = 4;      // GGML_MAX_DIMS

struct TypeTraits {
  uint32_t id;
  const char* name;
  int64_t block;  // elements per block
  uint64_t size;  // bytes per block
};
// ggml.c's type_traits (block sizes from ggml-common.h's static_asserts).
constexpr TypeTraits kTypes[] = {
    {0, "f32", 1, 4},         {1, "f16", 1, 2},          {2, "q4_0", 32, 18},
    {3, "q4_1", 32, 20},      {6, "q5_0", 32, 22},       {7, "q5_1", 32, 24},
    {8, "q8_0", 32, 34},      {9, "q8_1", 32, 36},       {10, "q2_K", 256, 84},
    {11, "q3_K", 256, 110},   {12, "q4_K", 256, 144},    {13, "q5_K", 256, 176},
    {14, "q6_K", 256, 210},   {15, "q8_K", 256, 292},    {16, "iq2_xxs", 256, 66},
    {17, "iq2_xs", 256, 74},  {18, "iq3_xxs", 256, 98},  {19, "iq1_s", 256, 50},
    {20, "iq4_nl", 32, 18},   {21, "iq3_s", 256, 110},   {22, "iq2_s", 256, 82},
    {23, "iq4_xs", 256, 136}, {24, "i8", 1, 1},          {25, "i16", 1, 2},
    {26, "i32", 1, 4},        {27, "i64", 1, 8},         {28, "f64", 1, 8},
    {29, "iq1_m", 256, 56},   {30, "bf16", 1, 2},        {34, "tq1_0", 256, 54},
    {35, "tq2_0", 256, 66},   {39, "mxfp4", 32, 17},     {40, "nvfp4", 64, 36},
    {41, "q1_0", 128, 18},    {42, "q2_0", 64, 18},
};

const TypeTraits* traits(uint32_t type) {
  for (const auto& t : kTypes)
    if (t.id == type) return &t;
  return nullptr;
}

uint64_t pad_to(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::Bool: return 1;
    case GgufValueType::U16: case GgufValueType::I16: return 2;
    case GgufValueType::U32: case GgufValueType::I32: case GgufValueType::F32: return 4;
    case GgufValueType::U64: case GgufValueType::I64: case GgufValueType::F64: return 8;
    default: return 0;  // String (variable), Array
  }
}

bool is_integer_type(GgufValueType t) {
  return t == GgufValueType::U8 || t == GgufValueType::I8 || t == GgufValueType::U16 ||
         t == GgufValueType::I16 || t == GgufValueType::U32 || t == GgufValueType::I32 ||
         t == GgufValueType::U64 || t == GgufValueType::I64 || t == GgufValueType::Bool;
}

bool is_real_type(GgufValueType t) { return t == GgufValueType::F32 || t == GgufValueType::F64; }

// Bounds-checked little-endian reads from the mapped header.
class Cursor {
 public:
  Cursor(const std::string& path, const char* p, uint64_t size) : path_(path), p_(p), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  void need(uint64_t n, const char* what) const {
    if (n > left())
      throw error(path_, ": ", what, " at byte ", pos_, " runs past the end of the file (", size_,
                  " bytes; truncated?)");
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s(p_ + pos_, p_ + pos_ + n);
    pos_ += n;
    return s;
  }
  const std::string& path() const { return path_; }

 private:
  const std::string& path_;
  const char* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

int64_t read_integer(Cursor& c, GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: return c.read<uint8_t>("a u8 value");
    case GgufValueType::I8: return c.read<int8_t>("an i8 value");
    case GgufValueType::Bool: {
      const uint8_t b = c.read<uint8_t>("a bool value");
      if (b > 1) throw error(c.path(), ": a bool value at byte ", c.pos() - 1, " is ", int(b), ", not 0 or 1");
      return b;
    }
    case GgufValueType::U16: return c.read<uint16_t>("a u16 value");
    case GgufValueType::I16: return c.read<int16_t>("an i16 value");
    case GgufValueType::U32: return c.read<uint32_t>("a u32 value");
    case GgufValueType::I32: return c.read<int32_t>("an i32 value");
    case GgufValueType::U64: return static_cast<int64_t>(c.read<uint64_t>("a u64 value"));
    case GgufValueType::I64: return c.read<int64_t>("an i64 value");
    default: throw InternalError("read_integer: not an integer type");
  }
}

double read_real(Cursor& c, GgufValueType t) {
  if (t == GgufValueType::F32) return c.read<float>("an f32 value");
  return c.read<double>("an f64 value");
}

GgufValueType value_type(Cursor& c, const std::string& key, bool in_array) {
  const uint32_t t = c.read<uint32_t>("a value type");
  if (t > static_cast<uint32_t>(GgufValueType::F64))
    throw error(c.path(), ": key '", key, "' has unknown value type ", t);
  if (in_array && t == static_cast<uint32_t>(GgufValueType::Array))
    throw error(c.path(), ": key '", key, "' is an array of arrays, which is not supported");
  return static_cast<GgufValueType>(t);
}

GgufValue read_value(Cursor& c, const std::string& key) {
  GgufValue v;
  v.type = value_type(c, key, false);
  if (v.type == GgufValueType::String) {
    v.text = c.string("a string value");
  } else if (is_integer_type(v.type)) {
    v.integer = read_integer(c, v.type);
  } else if (is_real_type(v.type)) {
    v.real = read_real(c, v.type);
  } else {  // Array
    v.element = value_type(c, key, true);
    const uint64_t n = c.read<uint64_t>("an array length");
    // Every element takes at least its scalar size (a string its 8-byte length): bound n first.
    const uint64_t min_size = v.element == GgufValueType::String ? 8 : scalar_size(v.element);
    if (n > c.left() / min_size)
      throw error(c.path(), ": key '", key, "': an array of ", n, " elements runs past the end of the file");
    if (v.element == GgufValueType::String) {
      v.texts.reserve(n);
      for (uint64_t i = 0; i < n; ++i) v.texts.push_back(c.string("an array string"));
    } else if (is_integer_type(v.element)) {
      v.integers.reserve(n);
      for (uint64_t i = 0; i < n; ++i) v.integers.push_back(read_integer(c, v.element));
    } else {
      v.reals.reserve(n);
      for (uint64_t i = 0; i < n; ++i) v.reals.push_back(read_real(c, v.element));
    }
  }
  return v;
}

void write_scalar(std::string& out, GgufValueType t, int64_t integer, double real) {
  auto put = [&](auto v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); };
  switch (t) {
    case GgufValueType::U8: case GgufValueType::Bool: put(static_cast<uint8_t>(integer)); break;
    case GgufValueType::I8: put(static_cast<int8_t>(integer)); break;
    case GgufValueType::U16: put(static_cast<uint16_t>(integer)); break;
    case GgufValueType::I16: put(static_cast<int16_t>(integer)); break;
    case GgufValueType::U32: put(static_cast<uint32_t>(integer)); break;
    case GgufValueType::I32: put(static_cast<int32_t>(integer)); break;
    case GgufValueType::U64: put(static_cast<uint64_t>(integer)); break;
    case GgufValueType::I64: put(integer); break;
    case GgufValueType::F32: put(static_cast<float>(real)); break;
    case GgufValueType::F64: put(real); break;
    default: throw InternalError("write_scalar: not a scalar type");
  }
}

void write_string(std::string& out, const std::string& s) {
  const uint64_t n = s.size();
  out.append(reinterpret_cast<const char*>(&n), 8);
  out += s;
}

void write_value(std::string& out, const GgufValue& v) {
  const auto t = static_cast<uint32_t>(v.type);
  out.append(reinterpret_cast<const char*>(&t), 4);
  if (v.type == GgufValueType::String) return write_string(out, v.text);
  if (v.type != GgufValueType::Array) return write_scalar(out, v.type, v.integer, v.real);
  const auto e = static_cast<uint32_t>(v.element);
  out.append(reinterpret_cast<const char*>(&e), 4);
  const uint64_t n = v.array_size();
  out.append(reinterpret_cast<const char*>(&n), 8);
  for (const auto& s : v.texts) write_string(out, s);
  for (int64_t i : v.integers) write_scalar(out, v.element, i, 0);
  for (double r : v.reals) write_scalar(out, v.element, 0, r);
}

}  // namespace

// ---- values ----

namespace {
GgufValue scalar(GgufValueType type) {
  GgufValue g;
  g.type = type;
  return g;
}
GgufValue array_of(GgufValueType element) {
  GgufValue g;
  g.type = GgufValueType::Array;
  g.element = element;
  return g;
}
}  // namespace

GgufValue GgufValue::u32(uint32_t v) { GgufValue g = scalar(GgufValueType::U32); g.integer = v; return g; }
GgufValue GgufValue::i32(int32_t v) { GgufValue g = scalar(GgufValueType::I32); g.integer = v; return g; }
GgufValue GgufValue::u64(uint64_t v) { GgufValue g = scalar(GgufValueType::U64); g.integer = static_cast<int64_t>(v); return g; }
GgufValue GgufValue::f32(float v) { GgufValue g = scalar(GgufValueType::F32); g.real = v; return g; }
GgufValue GgufValue::boolean(bool v) { GgufValue g = scalar(GgufValueType::Bool); g.integer = v; return g; }
GgufValue GgufValue::string(std::string v) { GgufValue g = scalar(GgufValueType::String); g.text = std::move(v); return g; }
GgufValue GgufValue::string_array(std::vector<std::string> v) {
  GgufValue g = array_of(GgufValueType::String);
  g.texts = std::move(v);
  return g;
}
GgufValue GgufValue::i32_array(const std::vector<int32_t>& v) {
  GgufValue g = array_of(GgufValueType::I32);
  g.integers.assign(v.begin(), v.end());
  return g;
}
GgufValue GgufValue::f32_array(const std::vector<float>& v) {
  GgufValue g = array_of(GgufValueType::F32);
  g.reals.assign(v.begin(), v.end());
  return g;
}

bool GgufValue::is_integer() const { return is_integer_type(type); }

size_t GgufValue::array_size() const { return texts.size() + integers.size() + reals.size(); }

std::string GgufValue::str(size_t max_items) const {
  std::ostringstream os;
  auto real_str = [](double r) {
    std::ostringstream s;
    s.precision(9);
    s << r;
    return s.str();
  };
  if (type == GgufValueType::String) {
    os << '"' << (text.size() > 60 ? text.substr(0, 57) + "..." : text) << '"';
  } else if (type == GgufValueType::Bool) {
    os << (integer ? "true" : "false");
  } else if (type == GgufValueType::U64) {
    os << static_cast<uint64_t>(integer);
  } else if (is_integer()) {
    os << integer;
  } else if (is_real_type(type)) {
    os << real_str(real);
  } else {
    const size_t n = array_size();
    os << "[" << n << " × " << gguf_value_type_name(element) << "]";
    for (size_t i = 0; i < std::min(n, max_items); ++i) {
      os << (i ? ", " : " ");
      if (!texts.empty()) os << '"' << texts[i] << '"';
      else if (!integers.empty()) os << integers[i];
      else os << real_str(reals[i]);
    }
    if (n > max_items) os << ", ...";
  }
  return os.str();
}

std::string_view gguf_value_type_name(GgufValueType t) {
  static constexpr std::string_view names[] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                               "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < std::size(names) ? names[i] : "?";
}

std::string ggml_type_name(uint32_t type) {
  const TypeTraits* t = traits(type);
  return t ? t->name : "type " + std::to_string(type);
}

uint64_t ggml_row_bytes(uint32_t type, int64_t ne0) {
  const TypeTraits* t = traits(type);
  if (!t) throw error("unknown ggml type ", type);
  if (ne0 < 0 || ne0 % t->block != 0)
    throw error("a row of ", ne0, " values is no whole number of ", t->name, " blocks of ", t->block);
  return static_cast<uint64_t>(ne0 / t->block) * t->size;
}

Shape GgufTensorInfo::shape() const { return Shape(ne.rbegin(), ne.rend()); }

// ---- Q8_0 ----

void quantize_q8_0(const float* x, int64_t n, uint8_t* out) {
  LR_CHECK(n % 32 == 0, "quantize_q8_0: ", n, " values");
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 34) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    const uint16_t dh = f32_to_f16(d);
    std::memcpy(out, &dh, 2);
    for (int j = 0; j < 32; ++j) out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
  }
}

void dequantize_q8_0(const uint8_t* in, int64_t n, float* y) {
  LR_CHECK(n % 32 == 0, "dequantize_q8_0: ", n, " values");
  for (int64_t b = 0; b < n / 32; ++b, in += 34, y += 32) {
    uint16_t dh;
    std::memcpy(&dh, in, 2);
    const float d = f16_to_f32(dh);
    for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(static_cast<int8_t>(in[2 + j]));
  }
}

// ---- reader ----

GgufFile GgufFile::open(const std::string& path) {
  MappedFile file = map_file(path, "a GGUF file");
  return parse(path, std::move(file.owner), file.data, file.size);
}

GgufFile GgufFile::from_bytes(std::string bytes, const std::string& name) {
  auto holder = std::make_shared<std::string>(std::move(bytes));
  const char* data = holder->data();
  const uint64_t size = holder->size();
  return parse(name, std::shared_ptr<void>(holder, holder->data()), data, size);
}

GgufFile GgufFile::parse(std::string path, std::shared_ptr<void> owner, const char* bytes, uint64_t size) {
  GgufFile file;
  file.path_ = std::move(path);
  const std::string& p = file.path_;
  if (size < 4 || std::memcmp(bytes, "GGUF", 4) != 0)
    throw error(p, ": not a GGUF file (", size < 4 ? "too short" : "no GGUF magic at its start", ")");
  if (size < 24) throw error(p, ": a GGUF header of ", size, " bytes (24 at least; truncated?)");
  Cursor c(p, bytes, size);
  c.read<uint32_t>("the magic");
  file.version_ = c.read<uint32_t>("the version");
  if (file.version_ != 2 && file.version_ != 3)
    throw error(p, ": GGUF version ", file.version_, " is not supported (2 and 3 are)");
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the key count");
  // A key takes at least 12 bytes (length and type), a tensor info 24: bound the counts first.
  if (n_kv > c.left() / 12) throw error(p, ": ", n_kv, " keys cannot fit in a file of ", size, " bytes");
  if (n_tensors > c.left() / 24)
    throw error(p, ": ", n_tensors, " tensors cannot fit in a file of ", size, " bytes");

  std::map<std::string, size_t, std::less<>> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.string("a key");
    if (keys.count(key)) throw error(p, ": key '", key, "' appears twice");
    GgufValue v = read_value(c, key);
    keys.emplace(key, file.metadata_.size());
    file.metadata_.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = file.find("general.alignment")) {
    if (a->type != GgufValueType::U32 || a->integer == 0 || (a->integer & (a->integer - 1)) != 0)
      throw error(p, ": general.alignment must be a u32 power of two, got ", a->str());
    file.alignment_ = static_cast<uint32_t>(a->integer);
  }

  std::map<std::string, size_t, std::less<>> names;
  uint64_t expected_offset = 0;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.string("a tensor name");
    if (t.name.size() >= kMaxName)
      throw error(p, ": tensor name '", t.name.substr(0, 80), "' is ", t.name.size(), " bytes (at most ", kMaxName - 1, ")");
    if (names.count(t.name)) throw error(p, ": tensor '", t.name, "' appears twice");
    const uint32_t dims = c.read<uint32_t>("a tensor's dimension count");
    if (dims > kMaxDims) throw error(p, ": tensor '", t.name, "' has ", dims, " dimensions (at most ", kMaxDims, ")");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < dims; ++d) {
      const uint64_t n = c.read<uint64_t>("a tensor dimension");
      if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) || (n != 0 && numel > (uint64_t(1) << 62) / n))
        throw error(p, ": tensor '", t.name, "' has a dimension of ", n, " (too large)");
      numel *= n;
      t.ne.push_back(static_cast<int64_t>(n));
    }
    // No ggml type packs more than 8 values in a byte: a tensor that cannot fit in the file is
    // refused before its size is computed (which could otherwise wrap around).
    if (numel / 8 > size) throw error(p, ": tensor '", t.name, "' has ", numel, " values, more than a file of ", size, " bytes holds");
    t.type = c.read<uint32_t>("a tensor type");
    if (!traits(t.type)) throw error(p, ": tensor '", t.name, "' has unknown ggml type ", t.type);
    t.offset = c.read<uint64_t>("a tensor offset");
    const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
    try {
      t.bytes = ne0 == 0 ? 0 : ggml_row_bytes(t.type, ne0) * (numel / static_cast<uint64_t>(ne0));
    } catch (const Error& e) {
      throw error(p, ": tensor '", t.name, "': ", e.what());
    }
    if (t.offset != expected_offset)
      throw error(p, ": tensor '", t.name, "' is at data offset ", t.offset, ", expected ", expected_offset,
                  " (tensors must follow each other, each aligned to ", file.alignment_, " bytes)");
    expected_offset = pad_to(t.offset + t.bytes, file.alignment_);
    names.emplace(t.name, file.tensors_.size());
    file.tensors_.push_back(std::move(t));
  }
  const uint64_t data_start = pad_to(c.pos(), file.alignment_);
  const uint64_t data_end = file.tensors_.empty() ? 0 : file.tensors_.back().offset + file.tensors_.back().bytes;
  if (data_start > size || data_end > size - data_start)
    throw error(p, ": the tensor data needs ", data_end, " bytes from byte ", data_start, ", but the file has ", size,
                " (truncated?)");
  file.mapping_ = std::move(owner);
  file.data_ = bytes + data_start;
  return file;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  for (const auto& [k, v] : metadata_)
    if (k == key) return &v;
  return nullptr;
}

std::string GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v || v->type != GgufValueType::String) throw error(path_, ": no string key '", key, "'");
  return v->text;
}

int64_t GgufFile::get_integer(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v || !v->is_integer()) throw error(path_, ": no integer key '", key, "'");
  return v->integer;
}

double GgufFile::get_real(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v || !is_real_type(v->type)) throw error(path_, ": no float key '", key, "'");
  return v->real;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

Tensor GgufFile::get_f32(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) throw error(path_, ": no tensor named '", name, "'");
  Tensor out = Tensor::empty(t->shape());
  const char* src = data_ + t->offset;
  const int64_t n = out.numel();
  switch (static_cast<GgmlType>(t->type)) {
    case GgmlType::F32: std::memcpy(out.f32(), src, t->bytes); break;
    case GgmlType::F16: convert_floats(src, DType::F16, out.f32(), DType::F32, n); break;
    case GgmlType::BF16: convert_floats(src, DType::BF16, out.f32(), DType::F32, n); break;
    case GgmlType::Q8_0: dequantize_q8_0(reinterpret_cast<const uint8_t*>(src), n, out.f32()); break;
    default: throw error(path_, ": tensor '", name, "' is ", ggml_type_name(t->type), ", which lowrank does not decode");
  }
  return out;
}

// ---- writer ----

void GgufWriter::set(const std::string& key, GgufValue value) {
  for (auto& [k, v] : metadata_)
    if (k == key) {
      v = std::move(value);
      return;
    }
  metadata_.emplace_back(key, std::move(value));
}

void GgufWriter::add_tensor(const std::string& name, Tensor t, GgmlType type) {
  if (name.size() >= kMaxName) throw error("GGUF tensor name '", name, "' is longer than ", kMaxName - 1, " bytes");
  for (const auto& e : tensors_)
    if (e.name == name) throw InternalError("GGUF tensor '" + name + "' added twice");
  LR_CHECK(t.device().is_cpu() && is_float(t.dtype()), name, ": ", t.str());
  LR_CHECK(t.rank() >= 1 && t.rank() <= kMaxDims, name, ": ", t.str());
  if (type == GgmlType::Q8_0 && t.dim(-1) % 32 != 0)
    throw error("tensor '", name, "': rows of ", t.dim(-1), " values cannot be Q8_0 (blocks of 32)");
  tensors_.push_back({name, std::move(t), type});
}

void GgufWriter::write(const std::string& path, const std::function<void(int64_t, int64_t)>& progress) const {
  std::string head("GGUF", 4);
  auto put = [&](auto v) { head.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put(uint32_t{3});
  put(static_cast<uint64_t>(tensors_.size()));
  put(static_cast<uint64_t>(metadata_.size()));
  uint64_t alignment = kDefaultAlignment;
  for (const auto& [k, v] : metadata_) {
    write_string(head, k);
    write_value(head, v);
    if (k == "general.alignment") alignment = static_cast<uint64_t>(v.integer);
  }
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const auto& e : tensors_) {
    write_string(head, e.name);
    put(static_cast<uint32_t>(e.tensor.rank()));
    for (int d = e.tensor.rank() - 1; d >= 0; --d) put(static_cast<uint64_t>(e.tensor.dim(d)));
    put(static_cast<uint32_t>(e.type));
    put(offset);
    const int64_t ne0 = e.tensor.dim(-1);
    sizes.push_back(ne0 == 0 ? 0 : ggml_row_bytes(static_cast<uint32_t>(e.type), ne0) * (e.tensor.numel() / ne0));
    offset = pad_to(offset + sizes.back(), alignment);
  }
  head.resize(pad_to(head.size(), alignment), '\0');

  AtomicFile out(path);
  out.write(head);
  const int64_t total = static_cast<int64_t>(head.size() + offset);
  int64_t written = static_cast<int64_t>(head.size());
  std::vector<char> buffer;
  const std::string zeros(alignment, '\0');
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i].tensor;
    const int64_t ne0 = t.dim(-1);
    const int64_t rows = ne0 == 0 ? 0 : t.numel() / ne0;
    const int64_t block_rows = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(ne0, 1));
    const uint64_t row_bytes = sizes[i] / std::max<int64_t>(rows, 1);
    std::vector<float> f32;
    for (int64_t r0 = 0; r0 < rows; r0 += block_rows) {
      const int64_t nr = std::min(block_rows, rows - r0);
      const int64_t n = nr * ne0;
      const char* src = static_cast<const char*>(t.raw()) + static_cast<size_t>(r0 * ne0) * dtype_size(t.dtype());
      buffer.resize(nr * row_bytes);
      switch (tensors_[i].type) {
        case GgmlType::F32: convert_floats(src, t.dtype(), buffer.data(), DType::F32, n); break;
        case GgmlType::F16: convert_floats(src, t.dtype(), buffer.data(), DType::F16, n); break;
        case GgmlType::BF16: convert_floats(src, t.dtype(), buffer.data(), DType::BF16, n); break;
        case GgmlType::Q8_0:
          f32.resize(n);
          convert_floats(src, t.dtype(), f32.data(), DType::F32, n);
          quantize_q8_0(f32.data(), n, reinterpret_cast<uint8_t*>(buffer.data()));
          break;
      }
      out.write(buffer.data(), buffer.size());
    }
    if (i + 1 < tensors_.size()) out.write(zeros.data(), pad_to(sizes[i], alignment) - sizes[i]);
    written += static_cast<int64_t>(pad_to(sizes[i], alignment));
    if (progress) progress(std::min(written, total), total);
  }
  out.commit();
}

}  // namespace lowrank::io
