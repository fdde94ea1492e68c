// Caching device allocator: freed blocks go to a per-device free list of their size class and are
// handed out again without cudaMalloc, so a training step loop with stable shapes allocates from
// the driver only in its first step. A device's ops run on one stream, so a block freed by the
// host can be reused at once: the next user's work is queued behind the previous user's. The one
// exception, side work (lowrank/ops/side_work.h) on a second stream, holds what it reads and the
// blocks freed inside its scopes until the main stream has waited for it (side_stream.cu).
// A graph recording (lowrank/core/device_graph.h) allocates from a pool of its own instead: the
// replays write to those addresses again, so no other tensor may ever be given them.
#include <atomic>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "allocator.h"
#include "common.cuh"
#include "context.h"
#include "lowrank/core/log.h"
#include "lowrank/core/shapes_vary.h"

namespace lowrank::cuda {
namespace {

struct DeviceCache {
  std::mutex mutex;
  std::map<size_t, std::vector<void*>> free;  // size class -> cached blocks
  AllocatorStats stats;
};

DeviceCache& cache(int index) {
  static auto* caches = new std::map<int, DeviceCache>();  // leaked: tensors may die after main
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  return (*caches)[index];
}

std::atomic<bool> g_poison{false};

}  // namespace

struct GraphPool {
  Device device;
  std::map<size_t, std::vector<void*>> free;  // size class -> blocks no tensor holds now
};

namespace {

// Which pool owns each block handed to a recording; consulted on free while any pool exists.
struct PoolRegistry {
  std::mutex mutex;
  std::unordered_map<void*, GraphPool*> owner;
  std::atomic<int> pools{0};
};
PoolRegistry& pool_registry() {
  static auto* r = new PoolRegistry();  // leaked: tensors may die after main
  return *r;
}
thread_local GraphPool* t_recording = nullptr;  // the pool of the recording this thread runs

std::string gib(size_t bytes) { return detail::concat(static_cast<double>(bytes) / (1u << 30)) + " GiB"; }

// Frees every cached block of the device; the caller holds c.mutex.
// (Blocks free in graph pools count as cached too, but stay.)
void release_cached(DeviceCache& c) {
  size_t bytes = 0;
  for (auto& [size, blocks] : c.free)
    for (void* p : blocks) {
      cudaFree(p);
      bytes += size;
    }
  c.free.clear();
  c.stats.reserved -= bytes;
  c.stats.cached -= bytes;
}

}  // namespace

size_t allocation_size_class(size_t bytes) {
  constexpr size_t kSmall = 1u << 20, kLarge = 256u << 20;
  if (bytes <= 512) return 512;
  if (bytes < kSmall) return (bytes + 511) / 512 * 512;
  if (bytes >= kLarge) return (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  // 8 classes per power of two: at most 12.5% rounding waste.
  size_t top = 1;
  while ((top << 1) <= bytes) top <<= 1;
  const size_t step = top / 8;
  return (bytes + step - 1) / step * step;
}

namespace {
// A block from the free list of its size class, or from cudaMalloc (after emptying the cache once
// if the driver is out of memory).
void* take_block(Device d, size_t bytes, size_t* size_class, DeviceContext& ctx) {
  size_t sc = allocation_size_class(bytes);
  *size_class = sc;
  DeviceCache& c = cache(d.index);
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.free.find(sc);
  // Inside a ShapesVary scope (a server's prefill: its sizes are new at almost every call), a
  // cached block of up to twice the size rather than cudaMalloc, one of CUDA's implicit
  // synchronizations.
  if ((it == c.free.end() || it->second.empty()) && shapes_vary()) {
    it = c.free.end();
    for (auto j = c.free.upper_bound(sc); j != c.free.end() && j->first <= 2 * sc; ++j)
      if (!j->second.empty()) {
        it = j;
        break;
      }
  }
  if (it != c.free.end() && !it->second.empty()) {
    sc = *size_class = it->first;
    void* p = it->second.back();
    it->second.pop_back();
    c.stats.cached -= sc;
    c.stats.in_use += sc;
    c.stats.peak_in_use = std::max(c.stats.peak_in_use, c.stats.in_use);
    ++c.stats.reuses;
    return p;
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, sc);
  if (e == cudaErrorMemoryAllocation && c.stats.cached > 0) {
    cudaGetLastError();
    // Cached blocks of other sizes may be what is missing: give them back and try once more.
    synchronize_streams(ctx);
    release_cached(c);
    e = cudaMalloc(&p, sc);
  }
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw error("CUDA out of memory on ", d.str(), ": cannot allocate ", bytes, " bytes (", gib(bytes), "); ",
                gib(c.stats.in_use), " in use by lowrank, ", gib(free_b), " free of ", gib(total_b),
                " on the GPU. Try --checkpointing or a smaller --batch-size / --seq-len");
  }
  LR_CUDA(e);
  // Each one is an implicit synchronization: LOWRANK_LOG=debug says which sizes still miss the cache.
  log_debug("allocator: cudaMalloc of ", sc, " bytes (", bytes, " asked) on ", d.str(),
            t_recording ? ", recording a graph" : "", shapes_vary() ? ", shapes vary" : "", "; reserved ",
            gib(c.stats.reserved + sc));
  ++c.stats.device_mallocs;
  c.stats.in_use += sc;
  c.stats.peak_in_use = std::max(c.stats.peak_in_use, c.stats.in_use);
  c.stats.reserved += sc;
  c.stats.peak_reserved = std::max(c.stats.peak_reserved, c.stats.reserved);
  return p;
}
}  // namespace

void set_poison_allocations(bool on) { g_poison = on; }

namespace {
// A block for a recording: a free one of its pool, else a new one that the pool owns from now on.
void* take_pool_block(GraphPool& pool, size_t bytes, size_t* size_class, DeviceContext& ctx) {
  const size_t sc = allocation_size_class(bytes);
  void* reused = nullptr;
  {
    std::lock_guard<std::mutex> lock(pool_registry().mutex);  // guards every pool's free lists
    auto it = pool.free.find(sc);
    if (it != pool.free.end() && !it->second.empty()) {
      reused = it->second.back();
      it->second.pop_back();
    }
  }
  if (reused) {
    void* p = reused;
    *size_class = sc;
    DeviceCache& c = cache(pool.device.index);
    std::lock_guard<std::mutex> lock(c.mutex);
    c.stats.cached -= sc;
    c.stats.in_use += sc;
    c.stats.peak_in_use = std::max(c.stats.peak_in_use, c.stats.in_use);
    ++c.stats.reuses;
    return p;
  }
  void* p = take_block(pool.device, bytes, size_class, ctx);
  PoolRegistry& r = pool_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.owner[p] = &pool;
  return p;
}
}  // namespace

void* cached_malloc(Device d, size_t bytes, size_t* size_class) {
  DeviceContext& ctx = context(d);  // checks the device and makes it current
  void* p = t_recording && t_recording->device == d ? take_pool_block(*t_recording, bytes, size_class, ctx)
                                                    : take_block(d, bytes, size_class, ctx);
  if (g_poison) LR_CUDA(cudaMemsetAsync(p, 0xFF, *size_class, ctx.stream));
  return p;
}

void cached_free(Device d, void* p, size_t size_class) {
  if (t_side_work_device == d.index) {  // side work may still read it after the main stream moves on
    defer_side_free(d, p, size_class);
    return;
  }
  PoolRegistry& r = pool_registry();
  if (r.pools.load() > 0) {
    std::unique_lock<std::mutex> lock(r.mutex);
    GraphPool* owner = nullptr;
    if (auto it = r.owner.find(p); it != r.owner.end()) owner = it->second;
    // A block freed while this thread records may still be read by the recorded ops: a replay
    // would read it again, so the recording's pool keeps it.
    else if (t_recording && t_recording->device == d) owner = r.owner[p] = t_recording;
    if (owner) {
      owner->free[size_class].push_back(p);
      lock.unlock();
      DeviceCache& c = cache(d.index);
      std::lock_guard<std::mutex> stats_lock(c.mutex);
      c.stats.in_use -= size_class;
      c.stats.cached += size_class;
      return;
    }
  }
  DeviceCache& c = cache(d.index);
  std::lock_guard<std::mutex> lock(c.mutex);
  c.free[size_class].push_back(p);
  c.stats.in_use -= size_class;
  c.stats.cached += size_class;
}

GraphPool* new_graph_pool(Device d) {
  check_device(d);
  ++pool_registry().pools;
  return new GraphPool{d, {}};
}

void delete_graph_pool(GraphPool* pool) {
  PoolRegistry& r = pool_registry();
  {
    // Free blocks go to the device's cache; blocks a tensor still holds go there when it is freed.
    std::lock_guard<std::mutex> lock(r.mutex);
    std::erase_if(r.owner, [&](const auto& e) { return e.second == pool; });
    DeviceCache& c = cache(pool->device.index);
    std::lock_guard<std::mutex> cache_lock(c.mutex);
    for (auto& [size, blocks] : pool->free)
      for (void* p : blocks) c.free[size].push_back(p);
  }
  --r.pools;
  delete pool;
}

void set_recording_pool(GraphPool* pool) { t_recording = pool; }

AllocatorStats allocator_stats(Device d) {
  check_device(d);
  DeviceCache& c = cache(d.index);
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.stats;
}

void reset_peak_stats(Device d) {
  check_device(d);
  DeviceCache& c = cache(d.index);
  std::lock_guard<std::mutex> lock(c.mutex);
  c.stats.peak_in_use = c.stats.in_use;
  c.stats.peak_reserved = c.stats.reserved;
}

void empty_cache(Device d) {
  DeviceContext& ctx = context(d);
  DeviceCache& c = cache(d.index);
  std::lock_guard<std::mutex> lock(c.mutex);
  synchronize_streams(ctx);  // queued work may still use the blocks
  release_cached(c);
}

}  // namespace lowrank::cuda
