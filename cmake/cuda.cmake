# CUDA backend: compiled when nvcc is found (AUTO) or demanded (ON).
# One real architecture plus PTX keeps compile time low (CI has 2 cores): sm_90 machine code for
# Hopper, compute_90 PTX that newer GPUs JIT-compile. Override with -DCMAKE_CUDA_ARCHITECTURES=...
set(LOWRANK_HAS_CUDA OFF)
if(NOT LOWRANK_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(LOWRANK_HAS_CUDA ON)
  elseif(LOWRANK_CUDA STREQUAL "ON")
    message(FATAL_ERROR "LOWRANK_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
file(GLOB_RECURSE LOWRANK_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/backend/cuda/*.cu)
if(LOWRANK_HAS_CUDA AND LOWRANK_CUDA_SOURCES)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "90-real;90-virtual")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  # CMake 3.25 does not know nvcc's C++20 flag (nvcc has it since 12.0); teach it.
  if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  # The lowrank target exists already, so its CUDA properties are set here, not inherited.
  set_target_properties(lowrank PROPERTIES CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}"
                        CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON)
  # Options given to the target so far are g++'s (-Wall ...): keep them away from nvcc.
  get_target_property(_lowrank_opts lowrank COMPILE_OPTIONS)
  if(_lowrank_opts)
    set(_wrapped "")
    foreach(_o IN LISTS _lowrank_opts)
      list(APPEND _wrapped "$<$<COMPILE_LANGUAGE:CXX>:${_o}>")
    endforeach()
    set_property(TARGET lowrank PROPERTY COMPILE_OPTIONS ${_wrapped})
  endif()
  # -lineinfo: compute-sanitizer and ncu can point at source lines; costs no speed.
  target_compile_options(lowrank PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo -Xcompiler=-Wall>)
  target_sources(lowrank PRIVATE ${LOWRANK_CUDA_SOURCES})
  target_compile_definitions(lowrank PUBLIC LOWRANK_WITH_CUDA=1)
  target_link_libraries(lowrank PUBLIC CUDA::cudart CUDA::cublasLt CUDA::cublas)
  # cuDNN's fused attention is optional and loaded at run time (dlopen, attention_cudnn.cu): no
  # link-time dependency, only its headers when present; the loader needs libdl.
  target_link_libraries(lowrank PRIVATE ${CMAKE_DL_LIBS})
  message(STATUS "lowrank: CUDA backend ON (architectures ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "lowrank: CUDA backend OFF")
endif()
