#include "lowrank/io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "lowrank/core/error.h"

namespace lowrank::io {

MappedFile map_file(const std::string& path, const char* what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw error(path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw error(path, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    if (S_ISDIR(st.st_mode)) throw error(path, ": is a folder, not ", what);
    throw error(path, ": is not a regular file");
  }
  MappedFile file;
  file.size = static_cast<uint64_t>(st.st_size);
  if (file.size == 0) {  // mmap refuses zero bytes; the format's reader reports the size
    ::close(fd);
    return file;
  }
  void* addr = ::mmap(nullptr, file.size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (addr == MAP_FAILED) throw error(path, ": cannot mmap: ", std::strerror(err));
  const uint64_t size = file.size;
  file.owner = std::shared_ptr<void>(addr, [size](void* p) { ::munmap(p, size); });
  file.data = static_cast<const char*>(addr);
  return file;
}

}  // namespace lowrank::io
