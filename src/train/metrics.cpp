#include "lowrank/train/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"

namespace lowrank::train {
namespace {

// Writes all of `bytes` (loops on partial writes and EINTR); false with errno set on failure.
bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Length of the file up to and including its last '\n' (0 if it has none); -1 on a read error.
off_t complete_prefix(int fd) {
  off_t end = ::lseek(fd, 0, SEEK_END);
  if (end < 0) return -1;
  char buf[1 << 16];
  while (end > 0) {
    const off_t begin =
        end > static_cast<off_t>(sizeof buf) ? end - static_cast<off_t>(sizeof buf) : 0;
    const ssize_t n = ::pread(fd, buf, static_cast<size_t>(end - begin), begin);
    if (n != end - begin) return -1;
    for (ssize_t i = n - 1; i >= 0; --i)
      if (buf[i] == '\n') return begin + i + 1;
    end = begin;
  }
  return 0;
}

}  // namespace

MetricsWriter::~MetricsWriter() { close(); }

MetricsWriter::MetricsWriter(MetricsWriter&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}

MetricsWriter& MetricsWriter::operator=(MetricsWriter&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

void MetricsWriter::open(const std::string& path) {
  close();
  // O_APPEND: every write lands at the end, even if something else appended meanwhile.
  const int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) throw error(path, ": cannot open metrics file: ", std::strerror(errno));
  // A partial last line (a write cut short by a full disk or a crash) is cut off, so the file
  // stays one whole record per line for readers and our first record starts a line of its own.
  const off_t keep = complete_prefix(fd);
  if (keep < 0 || (keep < ::lseek(fd, 0, SEEK_END) && ::ftruncate(fd, keep) != 0)) {
    const int err = errno;
    ::close(fd);
    throw error(path,
                ": cannot repair the partial last line of the metrics file: ", std::strerror(err));
  }
  fd_ = fd;
  path_ = path;
}

void MetricsWriter::write(const nlohmann::json& record) {
  if (fd_ < 0) throw error("metrics: write before open()");
  if (!record.is_object())
    throw error(path_, ": a metrics record must be a JSON object, got ", record.type_name());
  std::string line;
  try {
    line = record.dump();  // compact; NaN/Inf become null
  } catch (const nlohmann::json::exception& e) {
    throw error(path_, ": cannot write metrics record: ", e.what());
  }
  line += '\n';
  // One write() per line: the line reaches the kernel (and survives a kill) before we return.
  if (!write_all(fd_, line.data(), line.size()))
    throw error(path_, ": cannot write metrics file: ", std::strerror(errno));
}

void MetricsWriter::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  const std::string text = io::read_file(path);
  std::vector<nlohmann::json> records;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    const bool last_unterminated = nl == std::string::npos;
    const std::string line = text.substr(pos, last_unterminated ? std::string::npos : nl - pos);
    pos = last_unterminated ? text.size() : nl + 1;
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      if (last_unterminated) break;  // the line a kill cut short
      throw error(path, ": line ", line_no, ": not a JSON object");
    }
    records.push_back(std::move(j));
  }
  return records;
}

}  // namespace lowrank::train
