/* Linked into every test of the unit tier, which tests each kind of block on its own:
 *  - small classes take runs from their first block (run_threshold 0), as the tests of runs,
 *    remote frees, integrity and statistics expect a small request to land in a run (the
 *    tests of classes served from the medium heap set ta_run_threshold themselves);
 *  - requests over 8 KiB to 256 KiB come from the medium heap (span_min_kb 0, and runs for
 *    small classes alone: ta_run_limit), as the tests of medium blocks, purging and statistics
 *    expect (test/unit/span.c turns spans on, test/unit/runs.c the mid classes' runs).
 * The other tiers run with the defaults. */
#include "internal.h"

__attribute__((constructor)) static void runs_from_the_first_block(void) {
  ta_run_threshold = 0;
  ta_conf_span_min_kb = 0;
  ta_run_limit = TA_SMALL_MAX;
}
