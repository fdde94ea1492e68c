#pragma once
// Ranks as threads of this process, one GPU each, summing through NCCL (cuda::NcclGroup).
#include "lowrank/dist/communicator.h"

namespace lowrank::dist {

std::unique_ptr<Communicator> make_nccl_communicator(const std::vector<int>& gpus);

}  // namespace lowrank::dist
