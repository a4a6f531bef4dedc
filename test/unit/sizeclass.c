/* Unit tests: the size classes and their lookup table. */
#include <criterion/criterion.h>
#include <signal.h>

#include "internal.h"

/* The rule, written independently of sizeclass.c. */
static size_t rule_size(unsigned c) {
  if (c <= 8) return 16u * c;
  unsigned k = 7 + (c - 9) / 8, i = (c - 9) % 8;
  return ((size_t)1 << k) + (size_t)(i + 1) * ((size_t)1 << (k - 3));
}

Test(sizeclass, table_follows_rule) {
  for (unsigned c = 1; c <= TA_NUM_BINS; c++)
    cr_assert_eq(ta_class_size[c], rule_size(c), "class %u", c);
}

Test(sizeclass, smallest_class_that_fits) {
  for (size_t s = 1; s <= TA_SMALL_MAX * 4; s++) {
    unsigned c = ta_size_class(s);
    cr_assert_geq(ta_class_size[c], s, "size %zu", s);
    if (c > 1) cr_assert_lt(ta_class_size[c - 1], s, "size %zu not in smallest class", s);
  }
}

Test(sizeclass, lookup_table_agrees_with_formula) {
  for (size_t s = 0; s <= TA_SMALL_MAX; s++) {
    unsigned by_table = ta_class_lut[s];
    size_t want = s == 0 ? 1 : s;
    unsigned c = 1;
    while (ta_class_size[c] < want) c++;
    cr_assert_eq(by_table, c, "size %zu", s);
  }
}

Test(sizeclass, waste_at_most_one_eighth_above_128) {
  for (size_t s = 129; s <= TA_MEDIUM_MAX; s += 7) {
    size_t u = ta_class_size[ta_size_class(s)];
    cr_assert_leq((u - s) * 8, u, "size %zu gets %zu", s, u);
  }
}

Test(sizeclass, classes_are_16_byte_multiples_and_small_max) {
  for (unsigned c = 1; c <= TA_NUM_BINS; c++) cr_assert_eq(ta_class_size[c] % 16, 0);
  cr_assert_eq(ta_class_size[TA_NUM_SMALL], TA_SMALL_MAX);
  cr_assert_eq(ta_size_class(TA_SMALL_MAX), TA_NUM_SMALL);
}

Test(sizeclass, every_small_class_fills_a_run_with_at_least_eight_blocks) {
  for (unsigned c = 1; c <= TA_NUM_SMALL; c++)
    cr_assert_geq(TA_RUN_SIZE / ta_class_size[c], 8, "class %u", c);
}
