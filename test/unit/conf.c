/* Unit tests: TAMALLOC_CONF parsing — good values take effect, bad ones warn once and
 * change nothing. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tamalloc.h"

/* Runs ta_conf_apply(settings) with stderr captured; returns what was written. */
static char *apply_captured(const char *settings) {
  int pfd[2];
  cr_assert_eq(pipe(pfd), 0);
  int saved = dup(2);
  dup2(pfd[1], 2);
  ta_conf_apply(settings);
  dup2(saved, 2);
  close(saved);
  close(pfd[1]);
  static char buf[4096];
  ssize_t n = read(pfd[0], buf, sizeof buf - 1);
  close(pfd[0]);
  buf[n > 0 ? n : 0] = 0;
  return buf;
}

static int lines(const char *s) {
  int n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

Test(conf, good_values_take_effect) {
  char *err =
      apply_captured("decay_ms:1234,huge_cache_mb:16,huge_pages:off,stats:true,huge_batch:no");
  cr_assert_str_empty(err);
  cr_assert_eq(ta_decay_ms, 1234);
  cr_assert_eq(ta_huge_cache_limit, 16u << 20);
  cr_assert_eq(ta_huge_pages, false);
  cr_assert_eq(ta_huge_batch, false);
  cr_assert_eq(ta_huge_fresh, -1, "unset: the host decides");
  cr_assert_str_empty(apply_captured("huge_fresh:true"));
  cr_assert_eq(ta_huge_fresh, 1);
  cr_assert_str_empty(apply_captured("huge_fresh:off"));
  cr_assert_eq(ta_huge_fresh, 0);
  cr_assert(ta_stats_on);
  cr_assert_eq(ta_fast_limit, 0, "statistics take every malloc through the tracked path");
  apply_captured("stats:false,stats_format:json");
  cr_assert_not(ta_stats_on);
  cr_assert_eq(ta_fast_limit, TA_SMALL_MAX + 1);
  cr_assert_eq(ta_conf_stats_format, 1);
  cr_assert_str_empty(apply_captured("run_threshold:77"));
  cr_assert_eq(ta_run_threshold, 77);
  cr_assert_str_empty(apply_captured("span_min_kb:32"));
  cr_assert_eq(ta_conf_span_min_kb, 32);
  cr_assert_str_empty(apply_captured("span_min_kb:8"));
  cr_assert_eq(ta_conf_span_min_kb, 8);
  cr_assert_str_empty(apply_captured("span_min_kb:0"));
  cr_assert_eq(ta_conf_span_min_kb, 0);
  cr_assert_eq(ta_conf_lazy_commit, -1, "unset: the kernel's mode decides");
  cr_assert_str_empty(apply_captured("lazy_commit:yes"));
  cr_assert_eq(ta_conf_lazy_commit, 1);
  cr_assert_str_empty(apply_captured("lazy_commit:off"));
  cr_assert_eq(ta_conf_lazy_commit, 0);
  cr_assert_eq(ta_huge_halves, -1, "unset: the kernel's mode decides");
  cr_assert_str_empty(apply_captured("huge_pages:on"));
  cr_assert_str_empty(apply_captured("huge_halves:on"));
  cr_assert_eq(ta_huge_halves, 1);
  cr_assert_eq(ta_huge_pages, true, "a setting of its own: huge_pages stays as it was");
  cr_assert_str_empty(apply_captured("huge_halves:0"));
  cr_assert_eq(ta_huge_halves, 0);
}

Test(conf, unknown_key_warns_once_and_is_ignored) {
  uint64_t before = ta_decay_ms;
  char *err = apply_captured("colour:blue,decay_ms:77");
  cr_assert_eq(lines(err), 1, "%s", err);
  cr_assert(strstr(err, "tamalloc: TAMALLOC_CONF: unknown key 'colour:blue' ignored"), "%s", err);
  cr_assert_eq(ta_decay_ms, 77, "the good entry after it still applies");
  (void)before;
}

Test(conf, bad_values_warn_and_leave_the_setting_alone) {
  uint64_t decay = ta_decay_ms;
  size_t cache = ta_huge_cache_limit;
  uint32_t threshold = ta_run_threshold, span_min = ta_conf_span_min_kb;
  const char *bad[] = {"decay_ms:abc",        "decay_ms:-5",         "decay_ms:99999999999",
                       "decay_ms:",           "huge_cache_mb:1e3",   "stats:maybe",
                       "huge_pages:2",        "stats_format:xml",    "decay_ms",
                       "stats_interval_ms:0", "run_threshold:65536", "run_threshold:x",
                       "span_min_kb:7",       "span_min_kb:33",      "span_min_kb:1025",
                       "span_min_kb:",        "lazy_commit:2",       "lazy_commit:",
                       "huge_halves:always"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char *err = apply_captured(bad[i]);
    cr_assert_eq(lines(err), 1, "'%s' gave: %s", bad[i], err);
    cr_assert(strstr(err, bad[i]), "warning names the entry: %s", err);
  }
  cr_assert_eq(ta_decay_ms, decay);
  cr_assert_eq(ta_huge_cache_limit, cache);
  cr_assert_eq(ta_run_threshold, threshold);
  cr_assert_eq(ta_conf_span_min_kb, span_min);
  cr_assert_eq(ta_conf_lazy_commit, -1);
  cr_assert_eq(ta_huge_halves, -1);
  cr_assert_not(ta_stats_on);
}

/* huge_halves acts only with huge_pages: asked for without them, in either order, it is one
 * warning naming the entry, and is ignored; the other entries apply. */
Test(conf, huge_halves_without_huge_pages_warns_once_and_is_ignored) {
  char *err = apply_captured("huge_halves:yes,decay_ms:9,huge_pages:false");
  cr_assert_eq(lines(err), 1, "%s", err);
  cr_assert(
      strstr(err, "tamalloc: TAMALLOC_CONF: with huge_pages:false, 'huge_halves:yes' ignored"),
      "%s", err);
  cr_assert_eq(ta_huge_halves, -1, "as it was");
  cr_assert_not(ta_huge_pages);
  cr_assert_eq(ta_decay_ms, 9);
  err = apply_captured("huge_halves:0,huge_halves:on");
  cr_assert_eq(lines(err), 1, "huge_pages off from before: %s", err);
  cr_assert(strstr(err, "'huge_halves:on' ignored"), "%s", err);
  cr_assert_eq(ta_huge_halves, 0, "the value it was turned on from");
  cr_assert_str_empty(apply_captured("huge_halves:off"), "off asks for nothing");
  cr_assert_eq(ta_huge_halves, 0);
  cr_assert_not(ta_huge_pages, "huge_halves leaves huge_pages as it is");
  /* Ignored, it gets back the value it was turned on from, set by the string before. */
  err = apply_captured("huge_halves:on,huge_pages:off");
  cr_assert_eq(lines(err), 1, "%s", err);
  cr_assert_eq(ta_huge_halves, 0);
  /* huge_pages turned on again in the same string: no warning. */
  cr_assert_str_empty(apply_captured("huge_pages:false,huge_halves:on,huge_pages:true"));
  cr_assert_eq(ta_huge_halves, 1);
  cr_assert(ta_huge_pages);
  cr_assert_str_empty(apply_captured("huge_halves:on,huge_pages:on"));
  cr_assert_eq(ta_huge_halves, 1);
}

Test(conf, empty_entries_are_harmless) {
  char *err = apply_captured(",,decay_ms:5,,");
  cr_assert_str_empty(err);
  cr_assert_eq(ta_decay_ms, 5);
}
