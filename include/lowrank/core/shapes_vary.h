#pragma once
// Whether the work on this thread now meets new shapes at almost every call (a server's prefills:
// each batch of prompts has its own row count). Kernels that choose per shape by measuring — the
// CUDA GEMMs time cuBLASLt's best candidates on a problem's first call, with a host wait — take
// their first choice instead inside a ShapesVary scope: a prefill of 64 prompts met a new row
// count in most rounds, and tuning its GEMMs cost more than running them.
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
