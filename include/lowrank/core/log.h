#pragma once
// Levelled logging to stderr (stdout carries results only).
#include <string>

#include "lowrank/core/error.h"

namespace lowrank {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3, Quiet = 4 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_message(LogLevel level, const std::string& message);

template <typename... Args>
void log_debug(Args&&... a) { if (log_level() <= LogLevel::Debug) log_message(LogLevel::Debug, detail::concat(std::forward<Args>(a)...)); }
template <typename... Args>
void log_info(Args&&... a) { if (log_level() <= LogLevel::Info) log_message(LogLevel::Info, detail::concat(std::forward<Args>(a)...)); }
template <typename... Args>
void log_warn(Args&&... a) { if (log_level() <= LogLevel::Warn) log_message(LogLevel::Warn, detail::concat(std::forward<Args>(a)...)); }

}  // namespace lowrank
