#include "lowrank/io/checkpoint_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include "lowrank/core/error.h"
#include "lowrank/core/log.h"
#include "lowrank/io/files.h"

namespace lowrank::io {
namespace fs = std::filesystem;
namespace {

const std::string kTmpTag = ".tmp-";
const std::string kOldTag = ".old-";

std::string random_hex() {
  static thread_local std::mt19937_64 gen{std::random_device{}()};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(gen()));
  return buf;
}

// "<path><tag><pid>-<random>": the pid lets cleanup_stale_tmp tell live writers from dead ones.
std::string sibling_name(const std::string& path, const std::string& tag) {
  return path + tag + std::to_string(::getpid()) + "-" + random_hex();
}

// Strips trailing slashes so "run/checkpoint-5/" names the folder "checkpoint-5".
std::string normalize(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

std::string parent_of(const std::string& path) {
  const std::string p = fs::path(path).parent_path().string();
  return p.empty() ? "." : p;
}

bool lexists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

void fsync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) throw error(path, ": cannot open to fsync: ", std::strerror(errno));
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    throw error(path, ": fsync failed: ", std::strerror(err));
  }
  ::close(fd);
}

// fsyncs every regular file and folder under `dir` (symlinks are not followed), then `dir`.
void fsync_tree(const std::string& dir) {
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_regular_file(st))
      fsync_file(it->path().string());
    else if (fs::is_directory(st))
      fsync_directory(it->path().string());
  }
  if (ec) throw error(dir, ": cannot list folder to fsync: ", ec.message());
  fsync_directory(dir);
}

// Puts the complete folder `tmp` at `final_dir`. Returns the path where the previous checkpoint
// now is (to delete), or "" if there was none.
std::string install(const std::string& tmp, const std::string& final_dir) {
  struct stat st {};
  if (::lstat(final_dir.c_str(), &st) != 0) {
    if (errno != ENOENT) throw error(final_dir, ": cannot stat: ", std::strerror(errno));
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      const int err = errno;
      throw error(final_dir, ": cannot rename the temporary checkpoint folder into place: ",
                  std::strerror(err));
    }
    return "";
  }
  if (!S_ISDIR(st.st_mode))
    throw error(final_dir, ": exists and is not a folder; not replacing it with a checkpoint");
  // One atomic step: final_dir always names a complete checkpoint, old or new.
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0)
    return tmp;
  if (const int err = errno; err != EINVAL && err != ENOSYS && err != EOPNOTSUPP)
    throw error(final_dir,
                ": cannot exchange the checkpoint folder with the new one: ", std::strerror(err));
  // No exchange on this filesystem: move the old one aside, then the new one in. For a moment
  // final_dir is missing, but both complete folders exist; cleanup_stale_tmp restores one if we
  // crash in between.
  const std::string aside = sibling_name(final_dir, kOldTag);
  if (::rename(final_dir.c_str(), aside.c_str()) != 0) {
    const int err = errno;
    throw error(final_dir, ": cannot move the previous checkpoint aside: ", std::strerror(err));
  }
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    const int err = errno;
    ::rename(aside.c_str(), final_dir.c_str());  // best effort: put the old one back
    throw error(final_dir,
                ": cannot rename the temporary checkpoint folder into place: ", std::strerror(err));
  }
  return aside;
}

void remove_tree_or_warn(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) log_warn("cannot remove ", path, ": ", ec.message());
}

// Parses "<base>.tmp-<pid>-<hex>" / "<base>.old-<pid>-<hex>".
struct StaleName {
  std::string base;
  bool is_tmp = false;
  long pid = 0;
};
std::optional<StaleName> parse_stale_name(const std::string& name) {
  for (const std::string* tag : {&kTmpTag, &kOldTag}) {
    const size_t at = name.rfind(*tag);
    if (at == std::string::npos || at == 0) continue;
    const std::string rest = name.substr(at + tag->size());
    const size_t dash = rest.find('-');
    if (dash == std::string::npos || dash == 0 || dash + 1 == rest.size()) continue;
    const std::string pid = rest.substr(0, dash), hex = rest.substr(dash + 1);
    if (!std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        !std::all_of(hex.begin(), hex.end(),
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); }))
      continue;
    StaleName s;
    s.base = name.substr(0, at);
    s.is_tmp = tag == &kTmpTag;
    if (std::from_chars(pid.data(), pid.data() + pid.size(), s.pid).ec != std::errc{}) continue;
    return s;
  }
  return std::nullopt;
}

bool process_alive(long pid) {
  if (pid <= 0) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

}  // namespace

void write_checkpoint_dir(const std::string& final_dir_in,
                          const std::function<void(const std::string& tmp_dir)>& fill,
                          const nlohmann::json& manifest) {
  const std::string final_dir = normalize(final_dir_in);
  const std::string name = fs::path(final_dir).filename().string();
  if (name.empty() || name == "." || name == "..")
    throw error("checkpoint folder '", final_dir_in, "': not a folder name");
  if (!manifest.is_object())
    throw error(final_dir, ": checkpoint manifest must be a JSON object, got ",
                manifest.type_name());
  const std::string parent = parent_of(final_dir);
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) throw error(parent, ": cannot create folder: ", ec.message());

  std::string tmp;
  for (int attempt = 0; attempt < 16 && tmp.empty(); ++attempt) {
    const std::string candidate = sibling_name(final_dir, kTmpTag);
    if (::mkdir(candidate.c_str(), 0777) == 0)
      tmp = candidate;
    else if (errno != EEXIST)
      throw error(final_dir,
                  ": cannot create a temporary checkpoint folder: ", std::strerror(errno));
  }
  if (tmp.empty()) throw error(final_dir, ": cannot create a temporary checkpoint folder");

  std::string previous;
  try {
    fill(tmp);
    const std::string manifest_path = tmp + "/" + kCheckpointManifest;
    if (lexists(manifest_path))
      throw InternalError(final_dir +
                          ": fill() wrote manifest.json; pass it as `manifest` instead");
    fsync_tree(tmp);
    // Last: its presence is what marks the folder complete.
    write_json_atomic(manifest_path, manifest);
    previous = install(tmp, final_dir);
  } catch (...) {
    remove_tree_or_warn(tmp);
    throw;
  }
  fsync_directory(parent);  // make the rename durable
  if (!previous.empty()) remove_tree_or_warn(previous);
}

bool is_complete_checkpoint(const std::string& dir) {
  const std::string manifest = normalize(dir) + "/" + kCheckpointManifest;
  if (!is_directory(dir) || !file_exists(manifest)) return false;
  try {
    read_json(manifest);
    return true;
  } catch (const Error&) {
    return false;
  }
}

std::string checkpoint_name(int64_t step) { return "checkpoint-" + std::to_string(step); }

std::optional<int64_t> parse_checkpoint_name(const std::string& name) {
  static const std::string prefix = "checkpoint-";
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  const std::string digits = name.substr(prefix.size());
  if (digits.empty() || (digits.size() > 1 && digits[0] == '0') ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  int64_t step = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (ec != std::errc{} || end != digits.data() + digits.size()) return std::nullopt;
  return step;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir_in) {
  const std::string run_dir = normalize(run_dir_in);
  std::vector<std::pair<int64_t, std::string>> found;
  if (!lexists(run_dir)) return found;
  if (!is_directory(run_dir)) throw error(run_dir, ": is not a folder");
  std::error_code ec;
  for (fs::directory_iterator it(run_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto step = parse_checkpoint_name(it->path().filename().string());
    const std::string path = it->path().string();
    if (step && is_complete_checkpoint(path)) found.emplace_back(*step, path);
  }
  if (ec) throw error(run_dir, ": cannot list folder: ", ec.message());
  std::sort(found.begin(), found.end());
  return found;
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  auto all = list_checkpoints(run_dir);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

int cleanup_stale_tmp(const std::string& run_dir_in) {
  const std::string run_dir = normalize(run_dir_in);
  if (!is_directory(run_dir)) return 0;
  // base name -> stale folders for it
  std::map<std::string, std::vector<std::pair<StaleName, std::string>>> stale;
  std::error_code ec;
  for (fs::directory_iterator it(run_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto parsed = parse_stale_name(it->path().filename().string());
    std::error_code type_ec;
    if (!parsed || process_alive(parsed->pid) || !it->is_directory(type_ec)) continue;
    stale[parsed->base].emplace_back(*parsed, it->path().string());
  }
  if (ec) throw error(run_dir, ": cannot list folder: ", ec.message());

  int count = 0;
  for (auto& [base, entries] : stale) {
    const std::string target = run_dir + "/" + base;
    if (!lexists(target)) {
      // Restore a complete one, the newer (.tmp) first: a crash between the two renames.
      std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
        return a.first.is_tmp > b.first.is_tmp;
      });
      bool keep_all = false;
      for (auto& entry : entries) {
        if (!is_complete_checkpoint(entry.second)) continue;
        if (::rename(entry.second.c_str(), target.c_str()) == 0) {
          fsync_directory(run_dir);
          log_warn("restored checkpoint ", target, " from ", entry.second);
          entry.second.clear();
          ++count;
        } else {
          // Never delete what may be the only complete copy; leave it for a person to look at.
          log_warn("cannot restore checkpoint ", target, " from ", entry.second, ": ",
                   std::strerror(errno));
          keep_all = true;
        }
        break;
      }
      if (keep_all) continue;
    }
    for (const auto& entry : entries) {
      if (entry.second.empty()) continue;
      std::error_code rm;
      fs::remove_all(entry.second, rm);
      if (rm)
        log_warn("cannot remove ", entry.second, ": ", rm.message());
      else
        ++count;
    }
  }
  return count;
}

}  // namespace lowrank::io
