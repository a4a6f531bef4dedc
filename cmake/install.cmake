# Installation: `cmake --install build [--prefix P]` puts tamalloc in place like a system
# library (README.md, "Install"). Included from the top-level CMakeLists.txt when the
# shared library is built (not in sanitizer builds).
#
#   lib/libtamalloc.so.0.1.0, .so.0, .so     the replacement: preload it or link it
#   lib/libtamalloc-secure.so.0.1.0, ...     the hardened replacement (TAMALLOC_SECURE)
#   lib/libtamalloc.a                        the replacement, linked into one program
#   lib/libtamalloc_api.a                    the ta_ functions alone, malloc left alone
#   include/tamalloc.h
#   lib/pkgconfig/tamalloc.pc                pkg-config: links the replacement
#   lib/pkgconfig/tamalloc-api.pc            pkg-config: the ta_ functions alone
#   lib/cmake/tamalloc/                      find_package(tamalloc): tamalloc::tamalloc,
#                                            tamalloc::api, tamalloc::static, tamalloc::secure
#   share/man/man3/tamalloc.3                the library, its settings and statistics
#   share/man/man1/tamalloc.1, bin/tamalloc  the launcher (tools/tamalloc.in)
#
# lib is CMAKE_INSTALL_LIBDIR (GNUInstallDirs: lib/<multiarch> when the prefix is /usr).
# The launcher and the CMake package find the files relative to their own location, so an
# installed tree can be moved; the .pc files name the prefix given at install time.

include(CMakePackageConfigHelpers)

# ---- libraries and header ------------------------------------------------------------------
install(TARGETS tamalloc tamalloc_static tamalloc_api
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
if(TARGET tamalloc_secure)
  install(TARGETS tamalloc_secure LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()
install(FILES ${PROJECT_SOURCE_DIR}/include/tamalloc.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# ---- pkg-config ----------------------------------------------------------------------------
# Written at install time, so that the prefix is the one given to `cmake --install --prefix`
# (or CPack's), not the one configured.
install(CODE "
  set(_ta_pc_src \"${PROJECT_SOURCE_DIR}/cmake\")
  set(_ta_pc_bin \"${PROJECT_BINARY_DIR}/install/pkgconfig\")
  set(_ta_pc_libdir \"${CMAKE_INSTALL_LIBDIR}\")
  set(_ta_pc_includedir \"${CMAKE_INSTALL_INCLUDEDIR}\")
  set(_ta_pc_version \"${PROJECT_VERSION}\")")
install(CODE [[
  set(PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(PROJECT_VERSION "${_ta_pc_version}")
  foreach(_ta_dir libdir includedir)
    if(IS_ABSOLUTE "${_ta_pc_${_ta_dir}}")
      set(_ta_pc_${_ta_dir}_value "${_ta_pc_${_ta_dir}}")
    else()
      set(_ta_pc_${_ta_dir}_value "\${prefix}/${_ta_pc_${_ta_dir}}")
    endif()
  endforeach()
  set(PC_LIBDIR "${_ta_pc_libdir_value}")
  set(PC_INCLUDEDIR "${_ta_pc_includedir_value}")
  foreach(_ta_pc tamalloc tamalloc-api)
    configure_file("${_ta_pc_src}/${_ta_pc}.pc.in" "${_ta_pc_bin}/${_ta_pc}.pc" @ONLY)
  endforeach()
  if(IS_ABSOLUTE "${_ta_pc_libdir}")
    set(_ta_pc_dest "${_ta_pc_libdir}/pkgconfig")
  else()
    set(_ta_pc_dest "${CMAKE_INSTALL_PREFIX}/${_ta_pc_libdir}/pkgconfig")
  endif()
  file(INSTALL DESTINATION "${_ta_pc_dest}" TYPE FILE
    FILES "${_ta_pc_bin}/tamalloc.pc" "${_ta_pc_bin}/tamalloc-api.pc")
]])

# ---- CMake package -------------------------------------------------------------------------
set(TAMALLOC_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/tamalloc)
if(TARGET tamalloc_secure)
  set(TAMALLOC_SECURE_FILE_NAME "$<TARGET_FILE_NAME:tamalloc_secure>")
  set(TAMALLOC_SECURE_SONAME "$<TARGET_SONAME_FILE_NAME:tamalloc_secure>")
else()
  set(TAMALLOC_SECURE_FILE_NAME "")
  set(TAMALLOC_SECURE_SONAME "")
endif()
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/tamalloc-config.cmake.in
  ${PROJECT_BINARY_DIR}/install/tamalloc-config.cmake.in
  INSTALL_DESTINATION ${TAMALLOC_CMAKE_DIR}
  PATH_VARS CMAKE_INSTALL_LIBDIR CMAKE_INSTALL_INCLUDEDIR)
# Library file names come from the targets themselves (generator expressions).
file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/install/tamalloc-config.cmake
  INPUT ${PROJECT_BINARY_DIR}/install/tamalloc-config.cmake.in)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/install/tamalloc-config-version.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/install/tamalloc-config.cmake
  ${PROJECT_BINARY_DIR}/install/tamalloc-config-version.cmake
  DESTINATION ${TAMALLOC_CMAKE_DIR})

# ---- manual pages --------------------------------------------------------------------------
install(FILES ${PROJECT_SOURCE_DIR}/docs/man/tamalloc.3 DESTINATION ${CMAKE_INSTALL_MANDIR}/man3)
install(FILES ${PROJECT_SOURCE_DIR}/docs/man/tamalloc.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)

# ---- the launcher --------------------------------------------------------------------------
# bin/tamalloc finds the library through the path from its own directory to the library
# directory (absolute only when CMAKE_INSTALL_LIBDIR is).
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(TAMALLOC_LAUNCHER_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  file(RELATIVE_PATH TAMALLOC_LAUNCHER_LIBDIR
    "/prefix/${CMAKE_INSTALL_BINDIR}" "/prefix/${CMAKE_INSTALL_LIBDIR}")
endif()
set(TAMALLOC_LAUNCHER_LIBRARY "$<TARGET_SONAME_FILE_NAME:tamalloc>")
if(TARGET tamalloc_secure)
  set(TAMALLOC_LAUNCHER_SECURE "$<TARGET_SONAME_FILE_NAME:tamalloc_secure>")
else()
  set(TAMALLOC_LAUNCHER_SECURE "libtamalloc-secure.so")
endif()
configure_file(${PROJECT_SOURCE_DIR}/tools/tamalloc.in ${PROJECT_BINARY_DIR}/install/tamalloc.in @ONLY)
file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/install/tamalloc
  INPUT ${PROJECT_BINARY_DIR}/install/tamalloc.in)
install(PROGRAMS ${PROJECT_BINARY_DIR}/install/tamalloc DESTINATION ${CMAKE_INSTALL_BINDIR})
