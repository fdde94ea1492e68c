#include "tcp_group.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "lowrank/core/error.h"

namespace lowrank::dist {
namespace {

using Clock = std::chrono::steady_clock;

void set_timeouts(int fd, double seconds) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

addrinfo* resolve(const LaunchEnv& env) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(env.master_port);
  if (int rc = getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &res); rc != 0 || !res)
    throw error("MASTER_ADDR ", env.master_addr, ": cannot resolve (", gai_strerror(rc), ")");
  return res;
}

}  // namespace

TcpGroup::TcpGroup(const LaunchEnv& env, double timeout_s) : env_(env), timeout_s_(timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  addrinfo* addr = resolve(env);
  if (env.rank == 0) {
    peers_.assign(env.world_size, -1);
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_port = htons(static_cast<uint16_t>(env.master_port));
    any.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&any), sizeof any) != 0 || listen(listen_fd_, env.world_size) != 0) {
      freeaddrinfo(addr);
      throw error("rank 0: cannot listen on port ", env.master_port, " (", std::strerror(errno), ")");
    }
    freeaddrinfo(addr);
    set_timeouts(listen_fd_, timeout_s);
    for (int joined = 1; joined < env.world_size; ++joined) {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) {
        std::string missing;
        for (int r = 1; r < env.world_size; ++r)
          if (peers_[r] < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        throw error("rank 0: rank(s) ", missing, " did not connect to port ", env.master_port, " within ",
                    timeout_s, " s");
      }
      set_timeouts(fd, timeout_s);
      int32_t who = -1;
      recv_all(fd, &who, sizeof who, -1);
      if (who <= 0 || who >= env.world_size || peers_[who] >= 0) {
        close(fd);
        throw error("rank 0: a process announced itself as rank ", who, " (WORLD_SIZE ", env.world_size,
                    "): two processes with the same RANK?");
      }
      peers_[who] = fd;
    }
    return;
  }
  while (true) {  // rank 0 may not listen yet
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, addr->ai_addr, addr->ai_addrlen) == 0) {
      set_timeouts(fd, timeout_s);
      peers_ = {fd};
      break;
    }
    close(fd);
    if (Clock::now() > deadline) {
      freeaddrinfo(addr);
      throw error("rank ", env.rank, ": cannot reach rank 0 at ", env.master_addr, ":", env.master_port, " within ",
                  timeout_s, " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  freeaddrinfo(addr);
  const int32_t me = env.rank;
  send_all(peers_[0], &me, sizeof me, 0);
}

TcpGroup::~TcpGroup() {
  for (int fd : peers_)
    if (fd >= 0) close(fd);
  if (listen_fd_ >= 0) close(listen_fd_);
}

void TcpGroup::send_all(int fd, const void* data, size_t n, int peer) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0)
      throw error("rank ", env_.rank, ": sending to rank ", peer, " failed (", k == 0 ? "closed" : std::strerror(errno),
                  "): it stopped or did not answer within ", timeout_s_, " s");
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void TcpGroup::recv_all(int fd, void* data, size_t n, int peer) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t k = recv(fd, p, n, 0);
    if (k <= 0) {
      const std::string who = peer < 0 ? "a connecting process" : "rank " + std::to_string(peer);
      throw error("rank ", env_.rank, ": receiving from ", who, " failed (",
                  k == 0 ? "connection closed" : std::strerror(errno), "): it stopped or did not answer within ",
                  timeout_s_, " s");
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void TcpGroup::broadcast(std::vector<char>& bytes) {
  if (env_.rank == 0) {
    for (int r = 1; r < env_.world_size; ++r) send_all(peers_[r], bytes.data(), bytes.size(), r);
  } else {
    recv_all(peers_[0], bytes.data(), bytes.size(), 0);
  }
}

template <typename T>
static void add_into(Tensor& acc, const std::vector<char>& bytes) {
  T* a = acc.data<T>();
  const T* b = reinterpret_cast<const T*>(bytes.data());
  for (int64_t i = 0; i < acc.numel(); ++i) a[i] += b[i];
}

void TcpGroup::all_reduce_sum_(std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors)
    if (!t.device().is_cpu() || (t.dtype() != DType::F32 && t.dtype() != DType::F64))
      throw error("all-reduce over TCP takes f32/f64 CPU tensors, got ", t.str());
  if (env_.rank != 0) {
    for (Tensor& t : tensors) {
      const uint64_t n = t.nbytes();
      send_all(peers_[0], &n, sizeof n, 0);
      send_all(peers_[0], t.raw(), n, 0);
    }
    for (Tensor& t : tensors) recv_all(peers_[0], t.raw(), t.nbytes(), 0);
    return;
  }
  // Rank 0: add rank 1, 2, ... into its own tensors (rank order, as the in-process sum), then send back.
  std::vector<char> buf;
  for (int r = 1; r < env_.world_size; ++r) {
    for (Tensor& t : tensors) {
      uint64_t n = 0;
      recv_all(peers_[r], &n, sizeof n, r);
      if (n != t.nbytes()) throw error("all-reduce: rank ", r, " sent ", n, " bytes for ", t.str());
      buf.resize(n);
      recv_all(peers_[r], buf.data(), n, r);
      if (t.dtype() == DType::F32) add_into<float>(t, buf);
      else add_into<double>(t, buf);
    }
  }
  for (int r = 1; r < env_.world_size; ++r)
    for (Tensor& t : tensors) send_all(peers_[r], t.raw(), t.nbytes(), r);
}

}  // namespace lowrank::dist
