/* Memory going back to the kernel, measured on programs run with the replacement library
 * preloaded (the programs use the standard malloc names and know nothing of tamalloc). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Runs argv with LD_PRELOAD (and an optional TAMALLOC_CONF); returns the exit status and
 * the combined output in out. */
static int run(const char *const *argv, const char *conf, char *out, size_t cap) {
  char preload[1024], confvar[512];
  snprintf(preload, sizeof preload, "LD_PRELOAD=%s", TATEST_LIBRARY);
  snprintf(confvar, sizeof confvar, "TAMALLOC_CONF=%s", conf ? conf : "");
  char *envp[512];
  size_t n = 0;
  for (char **e = environ; *e && n < 500; e++)
    if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "TAMALLOC_CONF=", 14)) envp[n++] = *e;
  envp[n++] = preload;
  if (conf) envp[n++] = confvar;
  envp[n] = NULL;
  int pfd[2];
  cr_assert_eq(pipe(pfd), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
  posix_spawn_file_actions_addclose(&fa, pfd[0]);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, envp);
  cr_assert_eq(rc, 0, "spawn %s: %s", argv[0], strerror(rc));
  close(pfd[1]);
  size_t len = 0;
  ssize_t r;
  while ((r = read(pfd[0], out + len, cap - 1 - len)) > 0) len += (size_t)r;
  out[len] = 0;
  close(pfd[0]);
  int st;
  waitpid(pid, &st, 0);
  posix_spawn_file_actions_destroy(&fa);
  return st;
}

static void expect_clean_with(const char *prog, const char *arg, const char *conf) {
  static char out[65536];
  const char *argv[] = {prog, arg, NULL};
  int st = run(argv, conf, out, sizeof out);
  cr_log_info("%s", out);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: status %d\n%s", prog, st, out);
}

static void expect_clean(const char *prog) { expect_clean_with(prog, NULL, NULL); }

Test(memory, rss_back_after_idle_and_after_trim, .timeout = 120) { expect_clean(TATEST_MEM_GIVEBACK); }
Test(memory, free_memory_goes_back_after_the_decay, .timeout = 60) {
  expect_clean_with(TATEST_MEM_DECAY, NULL, "dirty_max_kb:4194304");
}
Test(memory, beyond_the_budget_memory_goes_back_at_once, .timeout = 60) {
  expect_clean_with(TATEST_MEM_DECAY, "budget", NULL);
}
Test(memory, break_moves_back_down, .timeout = 60) { expect_clean(TATEST_MEM_BRK); }
Test(memory, exited_threads_memory_goes_back, .timeout = 120) { expect_clean(TATEST_MEM_THREADS); }
/* The background thread returns it with no allocator call at all; without it, it stays.
 * (span_min_kb:16: the blocks of 12000 bytes stay in the threads' medium heaps.) */
Test(memory, memory_goes_back_with_no_allocator_call, .timeout = 60) {
  expect_clean_with(TATEST_MEM_BACKGROUND, NULL, "span_min_kb:16");
}
/* The same with spans, which no thread owns, freed by the last thread left. */
Test(memory, spans_go_back_with_no_allocator_call, .timeout = 60) {
  expect_clean_with(TATEST_MEM_BACKGROUND, "spans", NULL);
}
Test(memory, without_the_background_thread_it_waits_for_a_caller, .timeout = 60) {
  expect_clean_with(TATEST_MEM_BACKGROUND, "keeps", "background_thread:false,span_min_kb:16");
}
Test(memory, idle_threads_memory_goes_back_while_they_live, .timeout = 60) {
  expect_clean_with(TATEST_MEM_IDLE, NULL, "span_min_kb:32");
}
Test(memory, without_the_background_thread_idle_memory_stays, .timeout = 60) {
  expect_clean_with(TATEST_MEM_IDLE, "keeps", "background_thread:false,span_min_kb:32");
}
Test(memory, idle_threads_mid_blocks_give_their_pages_back, .timeout = 60) {
  expect_clean_with(TATEST_MEM_IDLE, "mid", NULL);
}
Test(memory, idle_threads_keep_no_page_for_classes_they_used_once, .timeout = 60) {
  expect_clean_with(TATEST_MEM_IDLE, "classes", NULL);
}
Test(memory, a_program_that_frees_and_allocates_again_does_not_refault, .timeout = 60) {
  expect_clean(TATEST_MEM_CYCLES);
}
Test(memory, idle_threads_memory_never_makes_a_busy_thread_refault, .timeout = 60) {
  expect_clean_with(TATEST_MEM_IDLE, "refault", "dirty_max_kb:16384");
}
Test(memory, the_purger_leaves_when_the_threads_are_gone, .timeout = 60) {
  expect_clean(TATEST_MEM_LONELY);
}
Test(memory, spans_freed_by_the_last_thread_do_not_start_the_purger, .timeout = 60) {
  expect_clean_with(TATEST_MEM_LONELY, "spans", NULL);
}
Test(memory, a_single_threaded_program_never_has_the_purger, .timeout = 60) {
  expect_clean_with(TATEST_MEM_LONELY, "single", NULL);
}
Test(memory, a_main_thread_that_calls_pthread_exit_ends_the_process, .timeout = 30) {
  expect_clean_with(TATEST_MEM_LONELY, "pexit", NULL);
}
Test(memory, sparsely_used_big_blocks_hold_only_touched_pages, .timeout = 120) {
  expect_clean(TATEST_MEM_SPARSE);
}
/* As the host has it, and with huge pages up front whatever the host (a host that reclaims
 * free memory gets none up front otherwise: huge_fresh). */
Test(memory, big_blocks_written_through_hold_no_huge_page_past_their_end, .timeout = 60) {
  expect_clean(TATEST_MEM_DENSE);
}
Test(memory, big_blocks_with_huge_pages_up_front_hold_none_past_their_end, .timeout = 60) {
  expect_clean_with(TATEST_MEM_DENSE, NULL, "huge_fresh:true");
}
Test(memory, with_lazy_commit_many_threads_are_charged_for_what_they_use, .timeout = 60) {
  expect_clean_with(TATEST_MEM_COMMIT, "lazy", "lazy_commit:true");
}
Test(memory, without_lazy_commit_each_arena_is_charged_its_chunks, .timeout = 60) {
  expect_clean_with(TATEST_MEM_COMMIT, "eager", "lazy_commit:false");
}

Test(memory, stats_json_at_exit_of_a_program_that_knows_nothing, .timeout = 60) {
  static char out[1 << 20];
  const char *argv[] = {"/usr/bin/sort", "-n", "/etc/services", "-o", "/dev/null", NULL};
  int st = run(argv, "stats_print:true,stats_format:json", out, sizeof out);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", out);
  char path[] = "/tmp/tamalloc-exit-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_eq(write(fd, out, strlen(out)), (ssize_t)strlen(out));
  close(fd);
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "python3 -c 'import json,sys; d=json.load(open(sys.argv[1]));"
           "assert d[\"mallocs\"]>0 and d[\"requested_bytes\"]<=d[\"usable_bytes\"];"
           "assert d[\"requested_tracked\"] is True;"
           "assert d[\"blocks\"]==d[\"mallocs\"]-d[\"frees\"], (d[\"blocks\"],d[\"mallocs\"],d[\"frees\"]);"
           "assert 0<=d[\"internal_fragmentation_pct\"]<=100 and 0<=d[\"external_fragmentation_pct\"]<=100' %s",
           path);
  int rc = system(cmd);
  unlink(path);
  cr_assert_eq(rc, 0, "report at exit did not parse as expected:\n%.2000s", out);
}

Test(memory, bad_setting_warns_once_and_the_program_runs, .timeout = 30) {
  static char out[65536];
  const char *argv[] = {"/bin/echo", "still running", NULL};
  int st = run(argv, "decay_ms:soon,nonsense:1", out, sizeof out);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  cr_assert(strstr(out, "still running"), "%s", out);
  cr_assert(strstr(out, "tamalloc: TAMALLOC_CONF: bad value 'decay_ms:soon' ignored\n"), "%s", out);
  cr_assert(strstr(out, "tamalloc: TAMALLOC_CONF: unknown key 'nonsense:1' ignored\n"), "%s", out);
}

Test(memory, stats_log_over_time, .timeout = 60) {
  static char out[65536];
  char log[] = "/tmp/tamalloc-log-XXXXXX";
  int fd = mkstemp(log);
  close(fd);
  char conf[256];
  snprintf(conf, sizeof conf, "stats_log:%s,stats_interval_ms:20,dirty_max_kb:4194304", log);
  const char *argv[] = {TATEST_MEM_DECAY, NULL};
  int st = run(argv, conf, out, sizeof out);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", out);
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "python3 -c 'import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])];"
           "assert len(rows)>=3, len(rows);"
           "assert all(r[\"t_ms\"]<=s[\"t_ms\"] for r,s in zip(rows,rows[1:]));"
           "assert max(r[\"heap_bytes\"] for r in rows)>100<<20' %s",
           log);
  int rc = system(cmd);
  unlink(log);
  cr_assert_eq(rc, 0);
}
