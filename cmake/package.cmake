# Packaging: `cpack -G DEB` in the build directory makes a Debian package of what
# `cmake --install` puts in place (cmake/install.cmake), under /usr. Included from the
# top-level CMakeLists.txt after cmake/install.cmake.
#
#   cd build && cpack -G DEB        ->  tamalloc_<version>-1_<arch>.deb
#   dpkg-deb -c tamalloc_*.deb      the files;  dpkg-deb -I tamalloc_*.deb   the control file
#
# Dependencies are computed by dpkg-shlibdeps (Debian: dpkg-dev, which also needs `file`);
# without it the package depends on the C library the libraries were built for, stated here.

set(CPACK_PACKAGE_NAME tamalloc)
set(CPACK_PACKAGE_VENDOR "tamalloc")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "thread-safe, multi-arena malloc replacement")
set(CPACK_PACKAGE_DESCRIPTION
"tamalloc replaces the system malloc in multithreaded programs: per-thread arenas with
lock-free fast paths, segregated size classes, lock-free cross-thread frees, memory given
back to the kernel after a short delay, exact heap statistics and a hardened variant.
This package holds the shared libraries (libtamalloc.so, to preload or link, and the
hardened libtamalloc-secure.so), the static libraries, the header, pkg-config and CMake
files, the tamalloc(3) manual and the launcher tamalloc(1).")
set(CPACK_PACKAGE_CONTACT "tamalloc maintainers <maintainers@users.noreply.r-seed-d061e100.example>"
  CACHE STRING "Maintainer named in the packages")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES OFF)

set(CPACK_DEBIAN_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
find_program(TAMALLOC_DPKG_SHLIBDEPS dpkg-shlibdeps)
find_program(TAMALLOC_FILE file)
mark_as_advanced(TAMALLOC_DPKG_SHLIBDEPS TAMALLOC_FILE)
if(TAMALLOC_DPKG_SHLIBDEPS AND TAMALLOC_FILE)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  # libtamalloc needs glibc's 2.34 symbols at most (objdump -T: GLIBC_2.34).
  set(CPACK_DEBIAN_PACKAGE_DEPENDS "libc6 (>= 2.34)")
endif()
# Manual pages compressed as Debian wants them (gzip -9n), in the staging tree only.
set(CPACK_PRE_BUILD_SCRIPTS ${PROJECT_SOURCE_DIR}/cmake/package-man.cmake)

set(CPACK_SOURCE_GENERATOR TGZ)
set(CPACK_SOURCE_IGNORE_FILES "/[.]git/" "/build[^/]*/" "/bench/[.]work/" "/bench/out/")

include(CPack)
