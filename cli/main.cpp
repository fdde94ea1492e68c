// lowrank: LoRA fine-tuning, evaluation, merging and generation.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>

#include "command.h"
#include "lowrank/backend/cpu_threads.h"
#include "lowrank/core/error.h"

namespace lowrank::cli {
std::vector<Command>& command_registry() {
  static std::vector<Command> registry;
  return registry;
}
}  // namespace lowrank::cli

int main(int argc, char** argv) {
  using namespace lowrank;
  // With OpenBLAS's own pthreads beside the OpenMP pool, OpenMP threads that spin while idle
  // steal the cores OpenBLAS needs (measured: CPU LoRA training 3x slower on 2 cores), so they
  // sleep. libgomp reads OMP_WAIT_POLICY before main runs, so set it and start again once; an
  // explicit user setting is kept. OpenBLAS built for OpenMP shares the one pool: libgomp's
  // default (spin a while, then sleep) is faster there (decode ~8% over PASSIVE).
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("LOWRANK_NO_REEXEC") && !cpu::blas_uses_openmp()) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // only returns on failure: then carry on as we are
  }
  CLI::App app{"lowrank: LoRA fine-tuning, evaluation, merging and generation for LLMs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "lowrank 0.1.0");
  auto& registry = cli::command_registry();
  std::sort(registry.begin(), registry.end(),
            [](const cli::Command& a, const cli::Command& b) { return a.name < b.name; });
  std::map<CLI::App*, std::function<int()>> runners;
  for (auto& c : registry) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    runners[sub] = c.setup(*sub);
  }
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const auto& c : registry) {
      known = known || c.name == argv[1];
      names += (names.empty() ? "" : ", ") + c.name;
    }
    if (!known) {
      std::fprintf(stderr, "error: unknown command '%s' (commands: %s)\n", argv[1], names.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s\nRun with --help for usage.\n", e.what());
    return 2;
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
    return 2;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::filesystem::filesystem_error& e) {
    // A path the user gave that cannot be created or read: bad input, not an internal error.
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 1;
  }
}
