/*
 * malloc_stats in a thread with a cancellation pending (deferred, the default). glibc prints
 * the report whole and the cancellation acts at the thread's next cancellation point; an
 * allocator that writes its report with plain write(2) gets the thread cancelled inside
 * malloc_stats, before anything is printed.
 *
 * Prints on stdout whether malloc_stats returned and whether the thread was cancelled
 * afterwards; the report itself goes to stderr.
 */
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static atomic_int cancel_sent, stats_returned;

static void *reporter(void *arg)
{
    (void)arg;
    /* A spin, not a wait: nothing before malloc_stats may be a cancellation point. */
    while (!atomic_load(&cancel_sent))
        ;
    malloc_stats();
    atomic_store(&stats_returned, 1);
    pthread_testcancel();
    return NULL;
}

int main(void)
{
    char *keep = malloc(1000); /* something for the report to count */
    pthread_t t;
    if (keep == NULL || pthread_create(&t, NULL, reporter, NULL) != 0)
        return 1;
    if (pthread_cancel(t) != 0)
        return 1;
    atomic_store(&cancel_sent, 1);
    void *result;
    if (pthread_join(t, &result) != 0)
        return 1;
    printf("malloc_stats %s; thread %s\n",
           atomic_load(&stats_returned) ? "returned" : "did not return",
           result == PTHREAD_CANCELED ? "cancelled" : "not cancelled");
    free(keep);
    return 0;
}
