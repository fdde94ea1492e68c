#pragma once
// AtomicFile: a file written under a temporary name next to its target and renamed over it only
// once complete and fsynced, so a reader (or a crash) sees the old file or the whole new one,
// never a half-written one. Streams: callers write pieces, so GB-sized outputs need no big buffer.
#include <cstddef>
#include <string>
#include <string_view>

namespace lowrank::io {

class AtomicFile {
 public:
  // Creates "<dir>/.<name>.tmp.<pid>.<random>"; throws Error naming `path` if it cannot.
  explicit AtomicFile(std::string path);
  // Removes the temporary file unless commit() succeeded (so failures leave nothing behind).
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // fsync, close, rename over the target, fsync the folder. Throws Error on any failure.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  void discard() noexcept;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace lowrank::io
