# Stub of Slicer's extension config / CPack includes (see SlicerConfig.cmake next to it): the
# extension metadata must be set by the time this is included.
include_guard(GLOBAL)  # included twice (config and CPack): check once
# Slicer's extension description spec (Extensions/CMake/SlicerExtensionDescriptionSpec.cmake) makes
# every one of these optional; the project sets these three. Homepage, icon and screenshot URLs are
# optional here too and recorded when given.
foreach(var EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "extension metadata ${var} is not set in the top-level CMakeLists.txt")
  endif()
endforeach()
file(APPEND "${SLICER_STUB_MANIFEST}" "CATEGORY ${EXTENSION_CATEGORY}\n")
separate_arguments(_stub_urls UNIX_COMMAND "${EXTENSION_HOMEPAGE} ${EXTENSION_SCREENSHOTURLS} ${EXTENSION_ICONURL}")
foreach(url IN LISTS _stub_urls)
  file(APPEND "${SLICER_STUB_MANIFEST}" "URL ${url}\n")
endforeach()
