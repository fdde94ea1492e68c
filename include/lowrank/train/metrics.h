#pragma once
// Training metrics as JSON Lines (one compact JSON object per line, e.g.
// {"step":10,"loss":2.31,"lr":0.0002,"grad_norm":0.8}). Each line goes to the kernel with a
// single write() as soon as it is written, so killing the process loses at most the line being
// written, and a resumed run appends to the same file.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lowrank::train {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  explicit MetricsWriter(const std::string& path) { open(path); }
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  MetricsWriter(MetricsWriter&& other) noexcept;
  MetricsWriter& operator=(MetricsWriter&& other) noexcept;

  // Opens `path` for appending, creating it (not its folder) if needed. A partial last line
  // (a write cut short by a crash or a full disk) is cut off first, so every line stays one
  // whole record. Throws Error naming the path if it cannot be opened.
  void open(const std::string& path);
  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

  // Appends `record` (must be a JSON object) as one line. NaN and Inf numbers are written as
  // null (JSON has no such numbers). Throws Error on a non-object, invalid UTF-8 in a string, a
  // write failure, or if the writer is not open.
  void write(const nlohmann::json& record);
  void close();

 private:
  int fd_ = -1;
  std::string path_;
};

// Reads a metrics file back: one object per non-empty line. A last line without its newline that
// does not parse (the line a kill interrupted) is skipped; any other bad line throws Error naming
// the file and the line number.
std::vector<nlohmann::json> read_metrics(const std::string& path);

}  // namespace lowrank::train
