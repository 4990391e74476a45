/* trimalloc — statistics, the RSS ledger, and allocation-site snapshots.
 *
 * Every function here is thread-safe and never allocates through trimalloc while it holds an
 * allocator lock; the printing functions write only to the FILE* or buffer the caller gives.
 * docs/stats.md explains each figure, the ledger and the JSON keys.
 */
#ifndef TRIMALLOC_STATS_H
#define TRIMALLOC_STATS_H

#include <stddef.h>
#include <stdio.h>

#include "trimalloc/trimalloc.h" /* TM_API */

#ifdef __cplusplus
extern "C" {
#endif

#define TM_STATS_CLASSES 32

/* One small size class (blocks of block_size bytes, 16..512). */
struct tm_class_stats {
  size_t block_size;
  size_t pools;       /* pools of this class in use (owned by a thread, or abandoned) */
  size_t blocks_live; /* blocks handed out and not freed (a block freed by another thread
                         counts here until its pool's owner collects it) */
  size_t blocks_free; /* free blocks on the lists of those pools (their pages are resident) */
  /* The true peak of blocks_live lies in [peak_blocks_seen, peak_blocks_bound] (docs/stats.md,
     "Peaks"): malloc and free keep no counters, so it is not known exactly. */
  size_t peak_blocks_seen;  /* highest blocks_live any stats call has seen: a lower bound */
  size_t peak_pools;        /* most pools of this class in use at once since start-up (exact) */
  size_t peak_blocks_bound; /* peak_pools * blocks per pool: an upper bound */
};

/* The RSS ledger: parts that add up to `total`; rss_kernel is what the kernel says.
 * All figures are bytes of resident memory. */
struct tm_ledger {
  size_t small_live;        /* live small blocks, counted at their block size */
  size_t small_free;        /* free blocks in pools in use */
  size_t small_pool_slack;  /* resident bytes of pools in use that are in no block: pool tails,
                               and carved-never or dormant pages still resident */
  size_t small_empty_pools; /* resident pages of pools no thread uses (cached for reuse) */
  size_t large_live;        /* jemalloc: bytes allocated (its size classes), minus pages of them
                               the kernel has not backed yet (never touched) */
  size_t large_slack;       /* jemalloc: active pages not covered by allocations */
  size_t large_dirty;       /* jemalloc: freed pages kept resident (dirty) */
  size_t metadata;          /* arena headers, thread heaps, jemalloc metadata, profiler tables */
  size_t not_ours_file;     /* kernel: file-backed and shared pages (program text, libraries) */
  size_t not_ours_anon;     /* kernel anonymous RSS minus all of the above that is ours:
                               stacks, other allocators, the program's own mmaps */
  size_t total;             /* sum of the lines above */
  size_t rss_kernel;        /* /proc/self/smaps_rollup Rss (statm if unavailable) */
  size_t ours;              /* the lines that are trimalloc's (everything but not_ours_*) */
  size_t overcount;         /* ours - kernel anonymous RSS when ours is larger (jemalloc counts
                               untouched pages as resident); 0 normally */

  /* small_live split into the bytes the program asked for and the rounding up to block sizes.
     Requested sizes are not kept per block (that would cost every malloc), so both are
     estimated from the live allocation samples while sampling is on (TRIMALLOC_PROFILE or
     tm_profile_set_rate). With sampling off, small_requested_known is 0 and the four figures
     are 0 (JSON: null). small_live_requested + small_rounding = small_live. */
  int small_requested_known;
  size_t small_live_requested;    /* estimate */
  size_t small_rounding;          /* estimate */
  size_t small_rounding_stderr;   /* one standard error of both estimates */
  size_t small_requested_samples; /* live samples of small requests behind the estimate */
};

struct tm_stats {
  /* totals */
  size_t allocated;           /* small_live + large_live */
  size_t resident_ours;       /* ledger.ours */
  size_t mapped;              /* address space trimalloc has mapped (arenas, jemalloc, metadata) */
  size_t peak_allocated_seen; /* highest `allocated` any stats call has seen: a lower bound of
                                 the true peak, which is not tracked */

  struct tm_class_stats classes[TM_STATS_CLASSES];

  /* small arenas (8 MiB; 1 MiB with -DTRIMALLOC_POOL_KIB=16) */
  size_t arenas;          /* mapped now */
  size_t arenas_released; /* unmapped so far */
  size_t arena_mapped;    /* arenas * the arena size */
  size_t arena_resident;  /* resident bytes of the arenas (mincore) */
  size_t pools_in_use;
  size_t pools_free_dirty;     /* free pools whose pages may be resident */
  size_t pools_free_clean;     /* free pools already given back */
  size_t empty_pools_resident; /* = ledger.small_empty_pools */
  size_t pages_released;       /* 4 KiB pages of pools in use that hold no block and are not
                                  resident: given back by a trim, or never touched yet */
  size_t trims;                /* tm_trim / malloc_trim calls so far */
  size_t trim_bytes_released;  /* bytes given back by tm_trim calls and by automatic decay */

  /* jemalloc, which serves blocks over 512 bytes; refreshed through its "epoch" */
  size_t large_allocated;
  size_t large_active;
  size_t large_resident;
  size_t large_retained;
  size_t large_mapped;
  size_t large_metadata;
  size_t large_dirty;             /* freed pages jemalloc keeps (pdirty of trimalloc's arenas) */
  size_t large_resident_measured; /* jemalloc's pages in trimalloc's slots, per mincore() */
  size_t large_nmalloc;           /* large allocations so far (trimalloc's jemalloc arenas) */
  size_t large_ndalloc;

  /* trimalloc's own bookkeeping */
  size_t meta_heaps;         /* thread heaps (meta_alloc) */
  size_t meta_arena_headers; /* resident header slots of the arenas */
  size_t meta_profiler;      /* allocation-site sampling tables */

  /* kernel */
  size_t rss;
  size_t rss_anon;
  size_t rss_file; /* file-backed + shared */

  /* allocation-site sampling */
  size_t profile_rate;         /* mean bytes between samples; 0 = off */
  size_t profile_samples_live; /* sampled allocations still live */

  struct tm_ledger ledger;
};

/* Fills *out; returns 0, or -1 if out is NULL. */
TM_API int tm_stats_get(struct tm_stats* out);

/* Writes the statistics to `out` as "text" (a table and the ledger) or "json".
 * Returns 0, or -1 (after a message on stderr naming the format) for an unknown format or a
 * NULL stream. */
TM_API int tm_stats_print(FILE* out, const char* format);

/* Writes the statistics as one JSON object into buf (always NUL-terminated when cap > 0) and
 * returns the length the full text needs, without the NUL, like snprintf: if the return value is
 * >= cap the text was cut; call again with a buffer of at least return + 1 bytes. */
TM_API size_t tm_stats_json(char* buf, size_t cap);

/* Allocation-site sampling. rate = mean bytes allocated between two samples (0 turns it off);
 * each sampled allocation records its call stack. Returns the previous rate. The environment
 * variable TRIMALLOC_PROFILE=<bytes>[k|m|g] sets it at start-up. */
TM_API size_t tm_profile_set_rate(size_t rate);
TM_API size_t tm_profile_rate(void);

/* Copies the live samples (sites with their estimated live bytes and counts) into the current
 * snapshot, replacing the previous one. Returns the number of sites, or -1 (errno) on failure. */
TM_API long tm_snapshot_take(void);
/* Writes the current snapshot (taking one first if none was taken) to `path` in the text format
 * tools/snapshot/trimalloc-snapshot-diff reads. Returns 0, or -1 with a message on stderr that
 * names the path. */
TM_API int tm_snapshot_write(const char* path);

#ifdef __cplusplus
}
#endif

#endif /* TRIMALLOC_STATS_H */
