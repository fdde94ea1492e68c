#pragma once
// Paths of committed fixtures and the built CLI, for tests.
#include <string>

namespace lowrank::test {

inline std::string source_dir() { return LOWRANK_SOURCE_DIR; }
inline std::string fixture(const std::string& rel) { return source_dir() + "/tests/fixtures/" + rel; }
inline std::string model_fixture(const std::string& name) { return fixture("models/" + name); }
inline std::string cli_path() { return LOWRANK_CLI_PATH; }

}  // namespace lowrank::test
