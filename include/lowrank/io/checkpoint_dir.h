#pragma once
// Atomic checkpoint folders. A checkpoint is a folder (e.g. "<run>/checkpoint-200") that is
// complete exactly when its manifest.json exists and parses: the manifest is written last, into
// a temporary folder that is renamed into place only after every file in it is on disk. So a
// crash at any instant leaves either the previous complete checkpoint or the new one under the
// final name (plus, at worst, a stale temporary folder that readers ignore).
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lowrank::io {

// Writes the checkpoint folder `final_dir` (its parent folders are created if needed):
//  1. creates "<final_dir>.tmp-<pid>-<random>" beside it;
//  2. calls fill(tmp_dir), which writes the checkpoint's files (any names but manifest.json);
//  3. fsyncs every file and folder in it, then writes manifest.json (atomically, fsynced) last;
//  4. puts the folder in place of final_dir: an atomic exchange where the filesystem supports it
//     (renameat2 RENAME_EXCHANGE), else the old folder is renamed aside first; the old folder is
//     deleted only after the new one is in place; then fsyncs the parent folder.
// If fill() or any step throws, the temporary folder is removed, final_dir is left as it was,
// and the exception propagates (Errors from here name the folder). `manifest` must be an object.
void write_checkpoint_dir(const std::string& final_dir,
                          const std::function<void(const std::string& tmp_dir)>& fill,
                          const nlohmann::json& manifest);

// The manifest file name inside a checkpoint folder.
inline constexpr const char* kCheckpointManifest = "manifest.json";

// True if `dir` is a folder holding a manifest.json that parses as JSON.
bool is_complete_checkpoint(const std::string& dir);

// "checkpoint-<step>" (the folder name for a step; transformers' Trainer uses the same).
std::string checkpoint_name(int64_t step);
// The step of a folder name "checkpoint-<digits>" (no sign, no leading zeros, fits int64);
// nullopt for any other name, including temporary and aside folders.
std::optional<int64_t> parse_checkpoint_name(const std::string& name);

// Complete checkpoint folders directly in `run_dir`, as (step, path), by increasing step.
// Empty if run_dir does not exist. Incomplete and temporary folders are left out.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir);
// The path of the complete checkpoint with the highest step, or nullopt if there is none.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

// Removes temporary ("<name>.tmp-<pid>-<hex>") and aside ("<name>.old-<pid>-<hex>") folders in
// `run_dir` left by writers that are no longer running (folders of a live process are kept).
// If such a folder is a complete checkpoint and "<name>" does not exist (a crash between the two
// renames of the fallback path), it is renamed to "<name>" instead, preferring the newer, .tmp,
// one. Returns the number of folders removed or restored; a missing run_dir is 0.
int cleanup_stale_tmp(const std::string& run_dir);

}  // namespace lowrank::io
