#include "lowrank/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"

namespace lowrank::io {
namespace {

std::string parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

std::string random_suffix() {
  // random_device alone is enough to make a collision with a concurrent writer unlikely;
  // O_EXCL plus retries makes it impossible to clobber someone else's temp file.
  static thread_local std::mt19937_64 gen{std::random_device{}()};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(gen()));
  return buf;
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  const std::filesystem::path target(path_);
  const std::string name = target.filename().string();
  if (name.empty() || name == "." || name == "..")
    throw error(path_, ": cannot write: not a file name");
  const std::string dir = parent_dir(path_);
  for (int attempt = 0; attempt < 16; ++attempt) {
    temp_path_ = dir + "/." + name + ".tmp." + std::to_string(::getpid()) + "." + random_suffix();
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0) return;
    if (errno != EEXIST) break;
  }
  const int err = errno;
  temp_path_.clear();
  throw error(path_, ": cannot create a temporary file in ", dir, ": ", std::strerror(err));
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
}

void AtomicFile::write(const void* data, size_t bytes) {
  if (fd_ < 0) throw error(path_, ": write after the file was committed or discarded");
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    // Linux writes at most ~2 GiB per call; loop on partial writes and EINTR.
    const size_t chunk = bytes < (size_t{1} << 30) ? bytes : (size_t{1} << 30);
    const ssize_t n = ::write(fd_, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      discard();
      throw error(path_, ": write failed: ", std::strerror(err));
    }
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw error(path_, ": commit after the file was committed or discarded");
  auto fail = [&](const char* what) {
    const int err = errno;
    discard();
    throw error(path_, ": ", what, ": ", std::strerror(err));
  };
  if (::fsync(fd_) != 0) fail("fsync failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("close failed");  // NFS reports deferred write errors here
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail("cannot rename the temporary file");
  committed_ = true;
  temp_path_.clear();
  fsync_directory(parent_dir(path_));
}

}  // namespace lowrank::io
