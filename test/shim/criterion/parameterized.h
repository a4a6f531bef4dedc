/* Parameterized tests for the sanitizer-build stand-in of Criterion; see criterion.h. */
#ifndef TATEST_SHIM_PARAMETERIZED_H
#define TATEST_SHIM_PARAMETERIZED_H

#include "criterion.h"

#define ParameterizedTestParameters(suite, name) static struct tts_params TTS_ID(params, suite, name)(void)

#define cr_make_param_array(Type, array, length, ...)                                         \
    ((struct tts_params){sizeof(Type), (void *)(array), (size_t)(length)})

#define ParameterizedTest(param, suite, name, ...)                                            \
    static struct tts_params TTS_ID(params, suite, name)(void);                              \
    static void TTS_ID(fn, suite, name)(param);                                             \
    static void TTS_ID(wrap, suite, name)(void *p) { TTS_ID(fn, suite, name)(p); }          \
    static struct tts_test TTS_ID(desc, suite, name) = {                                    \
        #suite, #name, NULL, TTS_ID(wrap, suite, name), TTS_ID(params, suite, name),       \
        {__VA_ARGS__}, NULL};                                                                 \
    __attribute__((constructor)) static void TTS_ID(reg, suite, name)(void)                  \
    {                                                                                         \
        tts_register(&TTS_ID(desc, suite, name));                                           \
    }                                                                                         \
    static void TTS_ID(fn, suite, name)(param)

#endif
