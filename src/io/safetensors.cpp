// The safetensors reader. Nothing in the file is trusted until checked: every size and offset is
// validated with overflow-checked arithmetic before a single tensor byte is handed out.
#include "lowrank/io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "lowrank/io/mapped_file.h"

namespace lowrank::io {
namespace {

using nlohmann::json;

// Same limit as the reference (Rust) implementation: a bigger header is corrupt or hostile.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// The format allows any rank; we list up to 8 (Tensor itself holds rank <= 4).
constexpr size_t kMaxRank = 8;
// A valid header nests 3 levels; the limit only stops pathological input early.
constexpr size_t kMaxNesting = 64;

uint64_t read_u64_le(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void check_min_size(const std::string& path, uint64_t size) {
  if (size < 8)
    throw error(path, ": file is ", size,
                " bytes, too short for a safetensors file (8-byte header length missing; "
                "truncated?)");
}

std::string describe_key_owner(const std::string& owner) {
  return owner == "__metadata__" ? std::string("__metadata__") : "tensor '" + owner + "'";
}

// Parses the header JSON. nlohmann silently keeps the last of duplicate keys, which would let a
// file show one tensor to us and another to other readers, so duplicates are detected here.
json parse_header(const std::string& path, const char* begin, const char* end) {
  struct Frame {
    bool is_object;
    std::string key_in_parent;  // "" inside arrays
    std::set<std::string> keys;
  };
  std::vector<Frame> stack;
  std::string last_key;
  auto on_event = [&](int /*depth*/, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start: {
        if (stack.size() >= kMaxNesting)
          throw error(path, ": header JSON is nested deeper than ", kMaxNesting, " levels");
        std::string name = !stack.empty() && stack.back().is_object ? last_key : std::string();
        stack.push_back({event == json::parse_event_t::object_start, std::move(name), {}});
        break;
      }
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!stack.empty()) stack.pop_back();
        break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!stack.empty() && !stack.back().keys.insert(key).second) {
          if (stack.size() == 1) throw error(path, ": duplicate tensor name '", key, "' in header");
          throw error(path, ": ", describe_key_owner(stack[1].key_in_parent), ": duplicate key '",
                      key, "'");
        }
        last_key = key;
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, on_event);
  } catch (const json::exception& e) {
    std::string what = e.what();
    if (const size_t close = what.find("] "); what.rfind("[json.exception", 0) == 0 &&
                                              close != std::string::npos)
      what = what.substr(close + 2);
    if (const auto* pe = dynamic_cast<const json::parse_error*>(&e))
      throw error(path, ": header is not valid JSON (at byte ", pe->byte, " of the header): ", what);
    throw error(path, ": header is not valid JSON: ", what);
  }
}

// A non-negative JSON integer, or nullopt (negative, fractional, non-number).
std::optional<uint64_t> as_u64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i >= 0) return static_cast<uint64_t>(i);
  }
  return std::nullopt;
}

std::string dims_str(const json& shape) {
  // Built by hand rather than with dump(): the entries are already known to be integers.
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += shape[i].is_number_unsigned() ? std::to_string(shape[i].get<uint64_t>())
                                       : std::to_string(shape[i].get<int64_t>());
  }
  return s + "]";
}

TensorInfo parse_entry(const std::string& path, const std::string& name, const json& entry) {
  const std::string where = path + ": tensor '" + name + "'";
  if (!entry.is_object())
    throw error(where, ": entry must be an object with dtype, shape and data_offsets (got ",
                entry.type_name(), ")");
  TensorInfo info;
  info.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) throw error(where, ": missing \"dtype\"");
  if (!dtype_it->is_string())
    throw error(where, ": \"dtype\" must be a string (got ", dtype_it->type_name(), ")");
  const auto& dtype_text = dtype_it->get_ref<const std::string&>();
  const auto dtype = parse_dtype(dtype_text);
  if (!dtype) throw error(where, ": unknown dtype '", dtype_text, "'");
  info.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) throw error(where, ": missing \"shape\"");
  if (!shape_it->is_array())
    throw error(where, ": \"shape\" must be an array (got ", shape_it->type_name(), ")");
  if (shape_it->size() > kMaxRank)
    throw error(where, ": shape has rank ", shape_it->size(), ", more than the supported ",
                kMaxRank);
  for (const json& d : *shape_it)
    if (!d.is_number_integer())
      throw error(where, ": shape entries must be integers (got ", d.type_name(), ")");
  uint64_t numel = 1;
  bool numel_overflows = false;
  for (const json& d : *shape_it) {
    const auto dim = as_u64(d);
    if (!dim) throw error(where, ": negative dimension ", d.get<int64_t>(), " in shape ",
                          dims_str(*shape_it));
    if (*dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw error(where, ": dimension ", *dim, " in shape ", dims_str(*shape_it), " is too large");
    info.shape.push_back(static_cast<int64_t>(*dim));
    // Keep going after an overflow: a later 0 makes the product 0, which is fine.
    if (__builtin_mul_overflow(numel, *dim, &numel)) numel_overflows = true;
  }
  if (std::find(info.shape.begin(), info.shape.end(), 0) != info.shape.end()) numel = 0;
  else if (numel_overflows || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw error(where, ": shape ", dims_str(*shape_it), " has too many elements (overflows 64 bits)");
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(info.dtype)), &nbytes))
    throw error(where, ": shape ", dims_str(*shape_it), " of ", dtype_text,
                " needs more bytes than fit in 64 bits");

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) throw error(where, ": missing \"data_offsets\"");
  std::optional<uint64_t> begin, end;
  if (offsets_it->is_array() && offsets_it->size() == 2) {
    begin = as_u64((*offsets_it)[0]);
    end = as_u64((*offsets_it)[1]);
  }
  if (!begin || !end)
    throw error(where, ": \"data_offsets\" must be [begin, end] with non-negative integers");
  if (*begin > *end)
    throw error(where, ": data_offsets begin ", *begin, " is after end ", *end);
  if (*end - *begin != nbytes)
    throw error(where, ": data_offsets [", *begin, ", ", *end, "] hold ", *end - *begin,
                " bytes but shape ", dims_str(*shape_it), " of ", dtype_text, " needs ", nbytes);
  info.begin = *begin;
  info.end = *end;
  return info;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const json& meta) {
  std::map<std::string, std::string> out;
  if (meta.is_null()) return out;  // the reference reader accepts null as "no metadata"
  if (!meta.is_object())
    throw error(path, ": __metadata__ must be an object of strings (got ", meta.type_name(), ")");
  for (const auto& [key, value] : meta.items()) {
    if (!value.is_string())
      throw error(path, ": __metadata__ key '", key, "' must be a string (got ", value.type_name(),
                  ")");
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

// The data buffer must be exactly the concatenation of the tensors: no byte unaccounted for
// (a hidden payload) and none shared (two names aliasing the same bytes).
void check_tiling(const std::string& path, const std::vector<TensorInfo>& sorted,
                  uint64_t data_size) {
  for (const auto& t : sorted)
    if (t.end > data_size)
      throw error(path, ": tensor '", t.name, "': data_offsets [", t.begin, ", ", t.end,
                  "] run past the end of the data section (", data_size,
                  " bytes; file truncated?)");
  uint64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (const auto& t : sorted) {
    if (t.begin < cursor)
      throw error(path, ": tensor '", t.name, "': data_offsets [", t.begin, ", ", t.end,
                  "] overlap tensor '", previous->name, "' [", previous->begin, ", ",
                  previous->end, "]");
    if (t.begin > cursor)
      throw error(path, ": tensor '", t.name, "': gap of ", t.begin - cursor,
                  " unused bytes before its data_offsets [", t.begin, ", ", t.end, "]",
                  previous ? " (after tensor '" + previous->name + "')" : std::string());
    cursor = t.end;
    previous = &t;
  }
  if (cursor != data_size) {
    if (previous)
      throw error(path, ": ", data_size - cursor, " trailing bytes after the last tensor '",
                  previous->name, "' (data section is ", data_size, " bytes, tensors end at ",
                  cursor, ")");
    throw error(path, ": ", data_size, " trailing bytes in the data section but no tensors");
  }
}

}  // namespace

SafetensorsFile SafetensorsFile::parse(std::string path, std::shared_ptr<void> owner,
                                       const char* bytes, uint64_t size) {
  check_min_size(path, size);
  const uint64_t header_len = read_u64_le(bytes);
  if (header_len > kMaxHeaderBytes)
    throw error(path, ": header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes,
                " bytes (corrupt file?)");
  if (header_len > size - 8)
    throw error(path, ": header length ", header_len, " runs past the end of the file (",
                size, " bytes; truncated?)");
  const char* header = bytes + 8;
  const uint64_t data_size = size - 8 - header_len;

  const json root = parse_header(path, header, header + header_len);
  if (!root.is_object())
    throw error(path, ": header must be a JSON object (got ", root.type_name(), ")");

  SafetensorsFile file;
  file.path_ = std::move(path);
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") file.metadata_ = parse_metadata(file.path_, value);
    else file.tensors_.push_back(parse_entry(file.path_, key, value));
  }
  // File order is offset order; ties (zero-size tensors) keep the header's (sorted) name order.
  std::stable_sort(file.tensors_.begin(), file.tensors_.end(),
                   [](const TensorInfo& a, const TensorInfo& b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  check_tiling(file.path_, file.tensors_, data_size);
  for (size_t i = 0; i < file.tensors_.size(); ++i) file.index_.emplace(file.tensors_[i].name, i);
  file.mapping_ = std::move(owner);
  file.data_ = header + header_len;
  return file;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  MappedFile file = map_file(path, "a safetensors file");
  return parse(path, std::move(file.owner), file.data, file.size);
}

SafetensorsFile SafetensorsFile::from_bytes(std::string bytes, const std::string& name) {
  auto holder = std::make_shared<std::string>(std::move(bytes));
  const char* data = holder->data();
  const uint64_t size = holder->size();
  return parse(name, std::shared_ptr<void>(holder, holder->data()), data, size);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (!info) throw error(path_, ": no tensor named '", name, "'");
  if (info->shape.size() > 4)
    throw error(path_, ": tensor '", name, "' has rank ", info->shape.size(), " (shape ",
                shape_str(info->shape), "); lowrank tensors support rank <= 4");
  // The mapping is read-only: writing through the returned tensor faults. clone() to modify.
  return Tensor::wrap(const_cast<char*>(data_ + info->begin), info->shape, info->dtype,
                      Device::cpu(), mapping_);
}

}  // namespace lowrank::io
