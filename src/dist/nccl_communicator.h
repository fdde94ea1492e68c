#pragma once
// GPU ranks summing through NCCL (cuda::NcclGroup): every GPU of this process as threads, or this
// process's one GPU of a multi-process run (the NCCL id handed out over the TCP group).
#include <memory>

#include "lowrank/dist/communicator.h"
#include "tcp_group.h"

namespace lowrank::dist {

std::unique_ptr<Communicator> make_nccl_communicator(const std::vector<int>& gpus);
std::unique_ptr<Communicator> make_nccl_process_communicator(std::unique_ptr<TcpGroup> group, int gpu);

}  // namespace lowrank::dist
