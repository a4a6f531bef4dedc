# CPack pre-build script (cmake/package.cmake): compresses the manual pages of the staging
# tree with gzip -9n, as Debian policy wants them. `cmake --install` leaves them as they are.
file(GLOB_RECURSE _ta_pages "${CPACK_TEMPORARY_INSTALL_DIRECTORY}/*/share/man/man[0-9]/*.[0-9]")
find_program(_ta_gzip gzip)
if(_ta_gzip)
  foreach(_ta_page IN LISTS _ta_pages)
    execute_process(COMMAND ${_ta_gzip} -9nf "${_ta_page}" RESULT_VARIABLE _ta_rc)
    if(NOT _ta_rc EQUAL 0)
      message(FATAL_ERROR "gzip ${_ta_page} failed")
    endif()
  endforeach()
endif()
