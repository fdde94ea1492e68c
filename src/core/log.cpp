#include "lowrank/core/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace lowrank {
namespace {
// LOWRANK_LOG=debug|info|warning|error|quiet sets the starting level (for a server or a bench
// whose command line has no such flag); anything else leaves Info.
LogLevel initial_level() {
  const char* e = std::getenv("LOWRANK_LOG");
  const std::string v = e ? e : "";
  if (v == "debug") return LogLevel::Debug;
  if (v == "warning") return LogLevel::Warn;
  if (v == "error") return LogLevel::Error;
  if (v == "quiet") return LogLevel::Quiet;
  return LogLevel::Info;
}
std::atomic<LogLevel> g_level{initial_level()};
std::mutex g_mutex;
}  // namespace

void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }

void log_message(LogLevel level, const std::string& message) {
  static const char* prefix[] = {"debug: ", "", "warning: ", "error: ", ""};
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "%s%s\n", prefix[static_cast<int>(level)], message.c_str());
}

}  // namespace lowrank
