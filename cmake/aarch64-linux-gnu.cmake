# Cross build for 64-bit Arm Linux with Debian's cross toolchain:
#
#   apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#   cmake --build build-arm64 -j2 && ctest --test-dir build-arm64
#
# The tests run under qemu-aarch64 when it is installed (the emulator below). Criterion is not
# installed for the target: the tests use the runner in test/shim (TATEST_SHIM), and are
# linked statically (TAMALLOC_STATIC_TESTS), so that the emulator needs no target libraries.
# The C++ operators are built when aarch64-linux-gnu-g++ is installed.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
find_program(TAMALLOC_AARCH64_CXX aarch64-linux-gnu-g++)
if(TAMALLOC_AARCH64_CXX)
  set(CMAKE_CXX_COMPILER ${TAMALLOC_AARCH64_CXX})
else()
  # Not the host's C++ compiler: without the target's, the libraries are C alone.
  set(TAMALLOC_CXX OFF CACHE BOOL "")
endif()

set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# The host's pkg-config files describe the host's libraries (Criterion among them).
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/aarch64-linux-gnu/lib/pkgconfig)

find_program(TAMALLOC_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(TAMALLOC_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${TAMALLOC_QEMU_AARCH64} -L /usr/aarch64-linux-gnu)
else()
  message(WARNING "qemu-aarch64 not found (Debian: qemu-user): the library builds, but the "
                  "tests cannot run on this machine")
endif()

set(TATEST_SHIM ON CACHE BOOL "")
set(TAMALLOC_STATIC_TESTS ON CACHE BOOL "")
