#pragma once
// Whether the work on this thread now meets new shapes at almost every call (a server's prefills:
// each batch of prompts has its own row count). Inside a ShapesVary scope, what is chosen per
// shape is not chosen by measuring: the CUDA GEMMs take cuBLASLt's heuristic choice on a problem's
// first call instead of timing candidates with a host wait each, and the CUDA allocator gives a
// size whose class has no cached block a cached block of up to twice its size rather than calling
// cudaMalloc (one of CUDA's implicit synchronizations). A prefill of 64 prompts met a new row count
// in most rounds, and choosing for it cost more than running it (bench/RESULTS.md, 2026-12-03).
// The CUDA attention forward takes its no-plan kernels inside a scope too (the paged prefill;
// evaluation of examples one at a time).
namespace lowrank {

class ShapesVary {
 public:
  ShapesVary();
  ~ShapesVary();
  ShapesVary(const ShapesVary&) = delete;
  ShapesVary& operator=(const ShapesVary&) = delete;

 private:
  bool outer_;  // nested scopes restore what was before
};

// True inside a ShapesVary scope on this thread.
bool shapes_vary();

}  // namespace lowrank
