// Multi-process runs: the launch environment and this process's communicator.
#include <cstdlib>
#include <string>

#include "lowrank/core/error.h"
#include "lowrank/dist/communicator.h"
#include "nccl_communicator.h"
#include "tcp_group.h"

namespace lowrank::dist {
namespace {

// CPU ranks, one per process: the sum travels through rank 0 over TCP.
class TcpCommunicator final : public Communicator {
 public:
  explicit TcpCommunicator(std::unique_ptr<TcpGroup> group) : group_(std::move(group)) {}
  int size() const override { return 1; }
  void all_reduce_sum_(int rank, std::vector<Tensor>& tensors) override {
    LR_CHECK(rank == 0, "one rank per process, got local rank ", rank);
    group_->all_reduce_sum_(tensors);
  }
  // The failing process exits; the others then see its connection close.
  void abort(int, const std::string&) override {}

 private:
  std::unique_ptr<TcpGroup> group_;
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 20) throw error(name, "=", v, " is not a rank, size or port number");
  return static_cast<int>(x);
}

}  // namespace

std::optional<LaunchEnv> launch_env_from_environment() {
  const int world = env_int("WORLD_SIZE", 1);
  if (world <= 1) return std::nullopt;
  LaunchEnv e;
  e.world_size = world;
  e.rank = env_int("RANK", -1);
  if (e.rank < 0 || e.rank >= world) throw error("WORLD_SIZE=", world, " needs RANK in 0..", world - 1);
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", e.master_port);
  // torchrun's agent serves its own store on MASTER_PORT (and says so): we meet one port above.
  if (const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE"); agent && std::string(agent) == "True")
    ++e.master_port;
  if (e.master_port == 0 || e.master_port > 65535) throw error("MASTER_PORT=", e.master_port, " is not a TCP port");
  return e;
}

std::unique_ptr<Communicator> make_process_communicator(const LaunchEnv& env, Device device) {
  auto group = std::make_unique<TcpGroup>(env, collective_timeout_seconds());
  if (device.is_cpu()) return std::make_unique<TcpCommunicator>(std::move(group));
  return make_nccl_process_communicator(std::move(group), device.index);
}

}  // namespace lowrank::dist
