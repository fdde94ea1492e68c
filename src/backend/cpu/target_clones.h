#pragma once
// Functions whose loops should vectorise on the machine they run on: GCC compiles them for AVX-512
// and AVX2 as well as the baseline x86-64 and picks one at run time. Their files compile with
// -ffp-contract=off (CMakeLists.txt), so that every clone rounds as the baseline does.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LOWRANK_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LOWRANK_CPU_CLONES
#endif
