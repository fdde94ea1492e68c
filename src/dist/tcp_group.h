#pragma once
// The processes of a multi-process run, connected in a star: rank 0 listens on MASTER_ADDR:
// MASTER_PORT and keeps one TCP connection to every other rank. Used to hand out NCCL's unique id
// and, for CPU ranks, as the all-reduce itself. Every blocking call gives up after the collective
// timeout with an error naming the rank that did not answer.
#include <string>
#include <vector>

#include "lowrank/dist/communicator.h"

namespace lowrank::dist {

class TcpGroup {
 public:
  // Rank 0 accepts WORLD_SIZE - 1 connections; the others connect (retrying until the timeout:
  // rank 0 may start later).
  TcpGroup(const LaunchEnv& env, double timeout_s);
  ~TcpGroup();
  TcpGroup(const TcpGroup&) = delete;
  TcpGroup& operator=(const TcpGroup&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  // Rank 0's `bytes` to every rank (the others pass a buffer of the same size to fill).
  void broadcast(std::vector<char>& bytes);
  // Elementwise sum of every rank's f32/f64 CPU tensors, added in rank order on rank 0 and sent back.
  void all_reduce_sum_(std::vector<Tensor>& tensors);

 private:
  void send_all(int fd, const void* data, size_t n, int peer);
  void recv_all(int fd, void* data, size_t n, int peer);

  LaunchEnv env_;
  double timeout_s_;
  int listen_fd_ = -1;
  std::vector<int> peers_;  // rank 0: [rank] -> socket (peers_[0] unused); others: [0] -> rank 0
};

}  // namespace lowrank::dist
