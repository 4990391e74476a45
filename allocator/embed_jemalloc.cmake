# Builds libtm_jemalloc.a: Debian's libjemalloc_pic.a with its C++ operators removed and every
# public symbol renamed (malloc -> tm_je_malloc, ...). Invoked by allocator/CMakeLists.txt as a
# custom command: cmake -DIN=... -DOUT=... -DWORK=... -P embed_jemalloc.cmake
set(public malloc calloc realloc free posix_memalign aligned_alloc memalign valloc
  malloc_usable_size mallocx rallocx xallocx sallocx dallocx sdallocx nallocx mallctl
  mallctlnametomib mallctlbymib malloc_stats_print malloc_message malloc_conf
  malloc_conf_2_conf_harder)
set(map "")
foreach(s ${public})
  string(APPEND map "${s} tm_je_${s}\n")
endforeach()
file(MAKE_DIRECTORY ${WORK})
file(WRITE ${WORK}/rename.map "${map}")
file(COPY_FILE ${IN} ${WORK}/jemalloc.a)
execute_process(COMMAND ar d ${WORK}/jemalloc.a jemalloc_cpp.pic.o RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "ar d failed on ${IN}")
endif()
# je_opt_cache_oblivious is weakened so that libtrimalloc's own definition (allocator/large.cpp)
# sets it: jemalloc 5.3.0 reads it once, at initialisation, and takes no MALLOC_CONF key for it.
execute_process(COMMAND objcopy --redefine-syms=${WORK}/rename.map
  --weaken-symbol=je_opt_cache_oblivious ${WORK}/jemalloc.a ${OUT}
  RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "objcopy failed on ${IN}")
endif()
