/*
 * A minimal stand-in for Criterion, used by ThreadSanitizer builds of the test suite.
 *
 * Criterion's runner cannot start under ThreadSanitizer: its sandbox needs an arena at an
 * address range that ThreadSanitizer reserves for shadow memory ("Could not initialize
 * inheritable arena"). The tests use a part of Criterion's API that is provided here with
 * the same meaning: Test, TestSuite and ParameterizedTest with .init, .fini, .timeout,
 * .signal, .exit_code and .disabled; the cr_assert_* and cr_expect_* families (plain,
 * comparison, NULL, zero, string, float and array forms); cr_log_*. Every test (and every
 * parameter of a parameterized test) runs in its own forked process; the runner prints
 * Criterion's synthesis line. See runner.c.
 */
#ifndef TATEST_SHIM_CRITERION_H
#define TATEST_SHIM_CRITERION_H

#include <stdbool.h>
#include <stddef.h>
/* Criterion's header brings these in; tests may rely on it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tts_options {
    void (*init)(void);
    void (*fini)(void);
    double timeout;
    int signal;
    int exit_code;
    bool disabled;
    const char *description;
};

struct tts_params {
    size_t size;
    void *data;
    size_t length;
};

struct tts_test {
    const char *suite, *name;
    void (*run)(void);
    void (*run_param)(void *);
    struct tts_params (*params)(void);
    struct tts_options options;
    struct tts_test *next;
};

struct tts_suite {
    const char *name;
    struct tts_options options;
    struct tts_suite *next;
};

void tts_register(struct tts_test *t);
void tts_register_suite(struct tts_suite *s);
/* fatal: end the test now (cr_assert); otherwise mark it failed and go on (cr_expect). */
void tts_fail(bool fatal, const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void tts_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define TTS_ID(kind, suite, name) tts_##kind##_##suite##_##name

#define Test(suite, name, ...)                                                                \
    static void TTS_ID(fn, suite, name)(void);                                              \
    static struct tts_test TTS_ID(desc, suite, name) = {                                    \
        #suite, #name, TTS_ID(fn, suite, name), NULL, NULL, {__VA_ARGS__}, NULL};             \
    __attribute__((constructor)) static void TTS_ID(reg, suite, name)(void)                  \
    {                                                                                         \
        tts_register(&TTS_ID(desc, suite, name));                                           \
    }                                                                                         \
    static void TTS_ID(fn, suite, name)(void)

#define TestSuite(suite, ...)                                                                 \
    static struct tts_suite tts_suite_##suite = {#suite, {__VA_ARGS__}, NULL};                 \
    __attribute__((constructor)) static void tts_suite_reg_##suite(void)                       \
    {                                                                                         \
        tts_register_suite(&tts_suite_##suite);                                               \
    }

/* The optional message of every assertion is a format string literal and its arguments. */
#define TTS_CHECK(fatal, failed, expr, ...)                                                   \
    do {                                                                                      \
        if (failed)                                                                           \
            tts_fail(fatal, __FILE__, __LINE__, expr, "" __VA_ARGS__);                       \
    } while (0)

#define TTS_A(failed, expr, ...) TTS_CHECK(true, failed, expr, __VA_ARGS__)
#define TTS_E(failed, expr, ...) TTS_CHECK(false, failed, expr, __VA_ARGS__)

static inline bool tts_str_cmp(const char *a, const char *b, int want)
{
    int c = strcmp(a, b);
    c = c < 0 ? -1 : c > 0;
    return c == want;
}

/* cr_assert_* end the test at the first failure; cr_expect_* record it and go on. */
#define cr_assert(cond, ...) TTS_A(!(cond), #cond, __VA_ARGS__)
#define cr_assert_not(cond, ...) TTS_A((cond), "!(" #cond ")", __VA_ARGS__)
#define cr_assert_eq(a, b, ...) TTS_A(!((a) == (b)), #a " == " #b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) TTS_A(!((a) != (b)), #a " != " #b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...) TTS_A(!((a) < (b)), #a " < " #b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) TTS_A(!((a) <= (b)), #a " <= " #b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...) TTS_A(!((a) > (b)), #a " > " #b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) TTS_A(!((a) >= (b)), #a " >= " #b, __VA_ARGS__)
#define cr_assert_null(p, ...) TTS_A((p) != NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) TTS_A((p) == NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_zero(x, ...) TTS_A((x) != 0, #x " == 0", __VA_ARGS__)
#define cr_assert_not_zero(x, ...) TTS_A((x) == 0, #x " != 0", __VA_ARGS__)
#define cr_assert_float_eq(a, b, eps, ...)                                                    \
    TTS_A(!(fabs((double)(a) - (double)(b)) <= (double)(eps)), #a " == " #b, __VA_ARGS__)
#define cr_assert_float_neq(a, b, eps, ...)                                                   \
    TTS_A(!(fabs((double)(a) - (double)(b)) > (double)(eps)), #a " != " #b, __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) TTS_A(!tts_str_cmp((a), (b), 0), #a " == " #b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...) TTS_A(tts_str_cmp((a), (b), 0), #a " != " #b, __VA_ARGS__)
#define cr_assert_str_lt(a, b, ...) TTS_A(!tts_str_cmp((a), (b), -1), #a " < " #b, __VA_ARGS__)
#define cr_assert_str_gt(a, b, ...) TTS_A(!tts_str_cmp((a), (b), 1), #a " > " #b, __VA_ARGS__)
#define cr_assert_str_leq(a, b, ...) TTS_A(tts_str_cmp((a), (b), 1), #a " <= " #b, __VA_ARGS__)
#define cr_assert_str_geq(a, b, ...) TTS_A(tts_str_cmp((a), (b), -1), #a " >= " #b, __VA_ARGS__)
#define cr_assert_str_empty(s, ...) TTS_A((s)[0] != '\0', #s " is empty", __VA_ARGS__)
#define cr_assert_str_not_empty(s, ...) TTS_A((s)[0] == '\0', #s " is not empty", __VA_ARGS__)
#define cr_assert_arr_eq(a, b, n, ...)                                                        \
    TTS_A(memcmp((a), (b), (n)) != 0, #a " == " #b, __VA_ARGS__)
#define cr_assert_arr_neq(a, b, n, ...)                                                       \
    TTS_A(memcmp((a), (b), (n)) == 0, #a " != " #b, __VA_ARGS__)
#define cr_assert_fail(...) tts_fail(true, __FILE__, __LINE__, "failure", "" __VA_ARGS__)

#define cr_expect(cond, ...) TTS_E(!(cond), #cond, __VA_ARGS__)
#define cr_expect_not(cond, ...) TTS_E((cond), "!(" #cond ")", __VA_ARGS__)
#define cr_expect_eq(a, b, ...) TTS_E(!((a) == (b)), #a " == " #b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...) TTS_E(!((a) != (b)), #a " != " #b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...) TTS_E(!((a) < (b)), #a " < " #b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...) TTS_E(!((a) <= (b)), #a " <= " #b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...) TTS_E(!((a) > (b)), #a " > " #b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...) TTS_E(!((a) >= (b)), #a " >= " #b, __VA_ARGS__)
#define cr_expect_null(p, ...) TTS_E((p) != NULL, #p " == NULL", __VA_ARGS__)
#define cr_expect_not_null(p, ...) TTS_E((p) == NULL, #p " != NULL", __VA_ARGS__)
#define cr_expect_zero(x, ...) TTS_E((x) != 0, #x " == 0", __VA_ARGS__)
#define cr_expect_not_zero(x, ...) TTS_E((x) == 0, #x " != 0", __VA_ARGS__)
#define cr_expect_float_eq(a, b, eps, ...)                                                    \
    TTS_E(!(fabs((double)(a) - (double)(b)) <= (double)(eps)), #a " == " #b, __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...) TTS_E(!tts_str_cmp((a), (b), 0), #a " == " #b, __VA_ARGS__)
#define cr_expect_str_neq(a, b, ...) TTS_E(tts_str_cmp((a), (b), 0), #a " != " #b, __VA_ARGS__)
#define cr_expect_str_empty(s, ...) TTS_E((s)[0] != '\0', #s " is empty", __VA_ARGS__)
#define cr_expect_str_not_empty(s, ...) TTS_E((s)[0] == '\0', #s " is not empty", __VA_ARGS__)
#define cr_expect_arr_eq(a, b, n, ...)                                                        \
    TTS_E(memcmp((a), (b), (n)) != 0, #a " == " #b, __VA_ARGS__)
#define cr_expect_fail(...) tts_fail(false, __FILE__, __LINE__, "failure", "" __VA_ARGS__)

#define cr_log_info(...) tts_log("[----] ", __VA_ARGS__)
#define cr_log_warn(...) tts_log("[WARN] ", __VA_ARGS__)
#define cr_log_error(...) tts_log("[ERR ] ", __VA_ARGS__)
#define cr_skip_test(...) exit(0)

#endif
