#include "lowrank/io/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "lowrank/core/error.h"
#include "lowrank/io/atomic_file.h"

namespace lowrank::io {

std::string read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw error(path, ": cannot read: ", std::strerror(errno));
  std::string bytes;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) bytes.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;  // EISDIR lands here: open() of a folder succeeds
      ::close(fd);
      throw error(path, ": cannot read: ", std::strerror(err));
    }
    bytes.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return bytes;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

std::string json_error_text(const std::exception& e) {
  std::string what = e.what();
  if (const size_t close = what.find("] "); what.rfind("[json.exception", 0) == 0 && close != std::string::npos)
    what = what.substr(close + 2);
  return what;
}

nlohmann::json parse_json(std::string_view text, const std::string& where) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    throw error(where, ": invalid JSON at byte ", e.byte, ": ", json_error_text(e));
  } catch (const nlohmann::json::exception& e) {  // e.g. out_of_range.406: a number that overflows
    throw error(where, ": invalid JSON: ", json_error_text(e));
  }
}

nlohmann::json read_json(const std::string& path) { return parse_json(read_file(path), path); }

void write_json_atomic(const std::string& path, const nlohmann::json& j, int indent) {
  std::string text;
  try {
    text = j.dump(indent);
  } catch (const nlohmann::json::exception& e) {  // e.g. a string that is not valid UTF-8
    throw error(path, ": cannot write JSON: ", e.what());
  }
  text += '\n';
  write_file_atomic(path, text);
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw error(dir, ": cannot open folder to fsync: ", std::strerror(errno));
  // Some filesystems cannot fsync a folder (EINVAL); the rename is then as durable as it gets.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    const int err = errno;
    ::close(fd);
    throw error(dir, ": fsync of folder failed: ", std::strerror(err));
  }
  ::close(fd);
}

}  // namespace lowrank::io
