/* Linked into every test of the unit tier: small classes take runs from their first block
 * (run_threshold 0), as the tests of runs, remote frees, integrity and statistics expect a
 * small request to land in a run. The tests of classes served from the medium heap set
 * ta_run_threshold themselves; the other tiers run with the default. */
#include "internal.h"

__attribute__((constructor)) static void runs_from_the_first_block(void) { ta_run_threshold = 0; }
