/* Assertion helpers shared by the test files. */
#ifndef MJT_TEST_UTIL_H
#define MJT_TEST_UTIL_H

#include <criterion/criterion.h>
#include <string.h>

#include "maskjit.h"

/* expr must return MJ_OK; on failure show the status and message. */
#define OK(expr)                                                                           \
    do {                                                                                   \
        mj_status s_ = (expr);                                                             \
        cr_assert_eq(s_, MJ_OK, "%s -> %s: %s", #expr, mj_status_name(s_), mj_last_error()); \
    } while (0)

/* expr must fail with status and a message containing needle. */
#define FAILS(expr, status, needle)                                                        \
    do {                                                                                   \
        mj_status s_ = (expr);                                                             \
        cr_assert_eq(s_, status, "%s -> %s (%s)", #expr, mj_status_name(s_), mj_last_error()); \
        cr_assert(strstr(mj_last_error(), needle), "message '%s' lacks '%s'", mj_last_error(), \
                  needle);                                                                 \
    } while (0)

#endif
