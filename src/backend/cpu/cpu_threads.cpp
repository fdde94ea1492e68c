#include "lowrank/backend/cpu_threads.h"

#include <cblas.h>

namespace lowrank::cpu {

bool blas_uses_openmp() { return openblas_get_parallel() == 2; }  // 0 sequential, 1 pthreads, 2 OpenMP

}  // namespace lowrank::cpu
