#pragma once
// Each cli/cmd_*.cpp registers one subcommand here; main.cpp only parses and dispatches.
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace lowrank::cli {

struct Command {
  std::string name;
  std::string help;
  // Adds the subcommand's options to `sub` and returns the function that runs it (returns the
  // exit code). Options bind to state captured by that function.
  std::function<std::function<int()>(CLI::App& sub)> setup;
};

std::vector<Command>& command_registry();

struct RegisterCommand {
  explicit RegisterCommand(Command c) { command_registry().push_back(std::move(c)); }
};

}  // namespace lowrank::cli
