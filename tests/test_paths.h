#pragma once
// Paths of committed fixtures and the built CLI, for tests.
#include <cstdlib>
#include <string>

namespace lowrank::test {

// The repository root: $LOWRANK_SOURCE_DIR when set (binaries run from another checkout, e.g. on
// the GPU box), else the folder the tests were built from.
inline std::string source_dir() {
  const char* env = std::getenv("LOWRANK_SOURCE_DIR");
  return env && *env ? env : LOWRANK_SOURCE_DIR;
}
inline std::string fixture(const std::string& rel) { return source_dir() + "/tests/fixtures/" + rel; }
inline std::string model_fixture(const std::string& name) { return fixture("models/" + name); }
// The built `lowrank` binary: $LOWRANK_CLI when set (the GPU box runs a packed build), else the build's.
inline std::string cli_path() {
  const char* env = std::getenv("LOWRANK_CLI");
  return env && *env ? env : LOWRANK_CLI_PATH;
}

}  // namespace lowrank::test
