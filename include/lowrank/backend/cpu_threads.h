#pragma once
// How the CPU backend's threads are pooled, for the CLI's choice of OpenMP's wait policy.

namespace lowrank::cpu {

// Whether the BLAS runs its threads in the OpenMP pool that lowrank's own loops use (OpenBLAS
// built for OpenMP) rather than in a pool of its own (OpenBLAS built for pthreads).
bool blas_uses_openmp();

}  // namespace lowrank::cpu
