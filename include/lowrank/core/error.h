#pragma once
// Error handling. `Error` is for bad input (a file, flag or dataset line the user gave us): the
// CLI prints "error: <what>" and exits 2. `InternalError` (via LR_CHECK) is a broken invariant
// inside lowrank: exit 1.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lowrank {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

class InternalError : public std::logic_error {
 public:
  explicit InternalError(const std::string& what) : std::logic_error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// Builds an Error message from streamable pieces: throw error("file ", path, ": bad header").
template <typename... Args>
Error error(Args&&... args) {
  return Error(detail::concat(std::forward<Args>(args)...));
}

// Prefixes an Error's message with context ("loading model.safetensors: ") and rethrows it.
[[noreturn]] void rethrow_with_context(const Error& e, const std::string& context);

}  // namespace lowrank

#define LR_CHECK(cond, ...)                                                                    \
  do {                                                                                         \
    if (!(cond))                                                                               \
      throw ::lowrank::InternalError(::lowrank::detail::concat(                                \
          __FILE__, ":", __LINE__, ": check failed: " #cond " ", ##__VA_ARGS__));              \
  } while (0)
