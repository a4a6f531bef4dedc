/* Output redirection for the sanitizer-build stand-in of Criterion; see criterion.h. */
#ifndef TATEST_SHIM_REDIRECT_H
#define TATEST_SHIM_REDIRECT_H

#include "criterion.h"

/* The test's stderr is discarded (Criterion captures it for assertions the tests here
 * never make). */
void cr_redirect_stderr(void);

#endif
