/*
 * Misuse probes (programs/probes.c) run with the replacement library preloaded. Each probe
 * does one misuse; the table says what the library must do with it:
 *
 *   DETECTED  the process ends by SIGABRT after exactly one line on stderr,
 *             "tamalloc: …" — naming the misused pointer when `named` is set (a
 *             corrupted free list found by malloc names the corrupted link instead)
 *   SAFE      a write after free: malloc hands out only legitimate blocks
 *   BY_DESIGN the misuse goes through, for the reason given (design.md)
 *   GAP       the misuse goes through, and should not: a known gap, for the reason given
 *
 * Whatever the expectation, a probe that makes malloc hand out an address the program
 * chose, or a block that is still live (the probe exits with 3, "FAIL"), fails the test.
 * A probe expected to go through that is detected is accepted (and printed).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tatest.h"

enum expect { DETECTED, SAFE, BY_DESIGN, GAP };

static const struct probe {
    const char *name;
    enum expect expect;
    bool named; /* the abort line names a pointer the probe announced */
    const char *why;
} probes[] = {
    {"double_free_small", DETECTED, true, "the block's mark, confirmed on the run's list"},
    {"double_free_medium", DETECTED, true, "INUSE clear, or CACHED set, in the block's header"},
    {"double_free_mid", DETECTED, true, "the block's mark, confirmed on the run's list"},
    {"double_free_span", DETECTED, true, "the page table says the span is free"},
    {"double_free_huge", DETECTED, true, "the meta block's state is CACHED"},
    {"double_free_small_delayed", DETECTED, true, "the mark stays while the block is free"},
    {"double_free_small_remote", DETECTED, true, "mark and a plausible link, both frees remote"},
    {"invalid_free_stack", DETECTED, true, "no granule of ours"},
    {"invalid_free_global", DETECTED, true, "no granule of ours"},
    {"invalid_free_mmap", DETECTED, true, "no granule of ours"},
    {"invalid_free_foreign_malloc", DETECTED, true, "no granule of ours"},
    {"invalid_free_never_allocated", DETECTED, true, "past what the run handed out"},
    {"interior_free_small", DETECTED, true, "not at a block boundary"},
    {"interior_free_medium", DETECTED, true, "no valid meta block before it"},
    {"interior_free_mid", DETECTED, true, "not at a block boundary"},
    {"interior_free_span", DETECTED, true, "no span starts on that page"},
    {"interior_free_huge", DETECTED, true, "not the meta block's data address"},
    {"unaligned_free_small", DETECTED, true, "not at a block boundary"},
    {"unaligned_free_medium", DETECTED, true, "no valid meta block before it"},
    {"unaligned_free_span", DETECTED, true, "not on a page boundary"},
    {"unaligned_free_huge", DETECTED, true, "not the meta block's data address"},
    {"exited_thread_double_free_small", DETECTED, true, "mark and link, in an ownerless arena"},
    {"exited_thread_double_free_medium", DETECTED, true, "INUSE clear or CACHED set"},
    {"exited_thread_double_free_span", DETECTED, true, "the page table says free"},
    {"exited_thread_double_free_huge", DETECTED, true, "the meta block's state is CACHED"},
    {"fork_double_free_small", DETECTED, true, "the child's second free finds the mark"},
    {"fork_double_free_medium", DETECTED, true,
     "the child's second free finds INUSE clear or CACHED set"},
    {"fork_double_free_span", DETECTED, true, "the child's second free finds the span free"},
    {"fork_double_free_huge", DETECTED, true, "the child's second free finds CACHED"},
    {"write_after_free_small", DETECTED, false, "the overwritten link decodes outside the run"},
    {"write_after_free_medium", SAFE, false,
     "bin links are checked both ways before unlinking; a forged one is never followed"},
    {"write_after_free_span", SAFE, false,
     "a span's data holds no metadata (its bin links are in its chunk's table)"},
    {"write_after_free_huge", SAFE, false,
     "a huge block's data holds no metadata (the meta block is before it)"},
    {"write_after_free_small_live", DETECTED, false,
     "a raw address stored as a link decodes outside the run"},
    {"overflow_1_byte_small_free_neighbour", DETECTED, false,
     "the byte lands in the free neighbour's encoded link"},
    {"overflow_1_byte_small_live_neighbour", BY_DESIGN, false,
     "small blocks have no header: the byte lands in the live neighbour's data"},
    {"overflow_1_byte_mid_live_neighbour", BY_DESIGN, false,
     "a mid block is a run's block, without a header: the byte lands in the live neighbour's data"},
    {"overflow_1_byte_medium", DETECTED, true, "the next header's check word"},
    {"overflow_1_byte_span", BY_DESIGN, false,
     "spans have no header: the byte lands in the next span's data (the hardened build has no "
     "spans)"},
    {"underflow_16_byte_small", BY_DESIGN, false,
     "small blocks have no header: the bytes land in the live neighbour's data"},
    {"underflow_16_byte_small_free_neighbour", DETECTED, false,
     "the bytes overwrite the free neighbour's link and mark"},
    {"underflow_16_byte_medium", DETECTED, true, "the block's own header and check word"},
    {"underflow_16_byte_span", BY_DESIGN, false,
     "spans have no header: the bytes land in the data before it (the hardened build has no "
     "spans)"},
    {"underflow_16_byte_huge", DETECTED, true,
     "the header's last word, the residency hint, must lie within the mapping on a page "
     "boundary: free checks it"},
    {"realloc_freed_small", DETECTED, true, "the owner confirms the block is on its list"},
    {"realloc_freed_medium", DETECTED, true, "INUSE clear or CACHED set"},
    {"realloc_freed_span", DETECTED, true, "the page table says free"},
    {"realloc_freed_huge", DETECTED, true, "the meta block's state is CACHED"},
    {"usable_size_freed_small", DETECTED, true, "the owner confirms the block is on its list"},
    {"usable_size_freed_medium", DETECTED, true, "INUSE clear or CACHED set"},
    {"usable_size_freed_span", DETECTED, true, "the page table says free"},
    {"usable_size_freed_huge", DETECTED, true, "the meta block's state is CACHED"},
    {"free_sized_small", DETECTED, true, "a size above the usable size never passes"},
    {"free_sized_medium", DETECTED, true, "a quarter of the size: below what realloc keeps"},
    {"free_sized_span", DETECTED, true, "not the request rounded up to a page"},
    {"free_sized_huge", DETECTED, true, "not the request rounded up to a page"},
};

#define NPROBES (sizeof probes / sizeof probes[0])

/* The pointers a probe announced ("pointer 0x… [0x…]"), as text. */
static int announced(const char *out, char ptrs[2][32])
{
    const char *l = strstr(out, "pointer ");
    if (!l)
        return 0;
    return sscanf(l, "pointer %31s %31s", ptrs[0], ptrs[1]);
}

static int one_line(const char *err)
{
    const char *nl = strchr(err, '\n');
    return nl != NULL && nl[1] == '\0';
}

/* Runs one probe; returns true when it behaved as the table says (reasons printed). */
static bool check(const struct probe *p, int *detected)
{
    char *argv[] = {TATEST_PROBES, (char *)p->name, NULL};
    char *env[] = {"LD_PRELOAD=" TATEST_LIBRARY, NULL};
    struct tt_run r;
    if (tt_run(&r, argv, env, NULL, NULL, 60) != 0) {
        cr_log_error("%s: cannot start %s", p->name, TATEST_PROBES);
        return false;
    }
    char how[128], ptrs[2][32];
    tt_describe_status(r.status, how, sizeof how);
    int nptrs = announced(r.out, ptrs);
    bool aborted = !r.timed_out && r.status != -1 && WIFSIGNALED(r.status) &&
                   WTERMSIG(r.status) == SIGABRT;
    bool ok = true;
    if (!r.timed_out && r.status != -1 && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 3) {
        cr_log_error("%s: malloc handed out a forged or live block: %s", p->name, r.out);
        ok = false;
    } else if (aborted) {
        ++*detected;
        bool line = strncmp(r.err, "tamalloc: ", 10) == 0 && one_line(r.err);
        bool names = !p->named || (nptrs >= 1 && strstr(r.err, ptrs[0])) ||
                     (nptrs == 2 && strstr(r.err, ptrs[1]));
        if (!line || !names) {
            cr_log_error("%s: aborted, but stderr is not one line naming %s: \"%s\"", p->name,
                         nptrs ? ptrs[0] : "the pointer", r.err);
            ok = false;
        }
        if (p->expect != DETECTED)
            cr_log_info("%s: expected to go through (%s), now detected: %s", p->name, p->why,
                        r.err);
    } else if (p->expect == DETECTED) {
        cr_log_error("%s: not detected (%s): %s; stdout: %s; stderr: %s", p->name, p->why, how,
                     r.out, r.err);
        ok = false;
    } else {
        const char *want = p->expect == SAFE ? "safe\n" : "undetected\n";
        if (!tt_run_ok(&r) || strstr(r.out, want) == NULL) {
            cr_log_error("%s: expected \"%s\", got %s; stdout: %s; stderr: %s", p->name, want,
                         how, r.out, r.err);
            ok = false;
        }
    }
    tt_run_release(&r);
    return ok;
}

Test(probes, misuse_is_detected_and_never_hands_out_forged_blocks, .timeout = 600)
{
    cr_assert_eq(access(TATEST_LIBRARY, R_OK), 0, "the library %s does not exist: %s",
                 TATEST_LIBRARY, strerror(errno));

    /* The table and the program list the same probes, in the same order. */
    char *argv[] = {TATEST_PROBES, "list", NULL};
    struct tt_run r;
    cr_assert_eq(tt_run(&r, argv, NULL, NULL, NULL, 60), 0);
    cr_assert(tt_run_ok(&r));
    char expected[4096] = "";
    for (size_t i = 0; i < NPROBES; i++) {
        strcat(expected, probes[i].name);
        strcat(expected, "\n");
    }
    cr_assert_str_eq(r.out, expected, "the probe program and the table disagree");
    tt_run_release(&r);

    int failed = 0, detected = 0;
    for (size_t i = 0; i < NPROBES; i++)
        if (!check(&probes[i], &detected))
            failed++;
    cr_log_info("%d of %zu probes detected", detected, NPROBES);
    cr_expect_eq(failed, 0, "%d of %zu probes did not behave as expected", failed, NPROBES);
}
