/* The program the preload tests compile with gcc: its output must not depend on the
 * allocator gcc ran with. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    char name[24];
    unsigned value;
};

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

int main(void)
{
    enum { N = 100000 };
    char *sieve = calloc(N, 1);
    unsigned primes = 0, last = 0;
    for (unsigned i = 2; i < N; i++) {
        if (sieve[i])
            continue;
        primes++;
        last = i;
        for (unsigned j = i * 2; j < N; j += i)
            sieve[j] = 1;
    }
    printf("primes below %d: %u, largest %u\n", N, primes, last);
    free(sieve);

    struct entry *e = malloc(5000 * sizeof *e);
    unsigned x = 1;
    for (int i = 0; i < 5000; i++) {
        x = x * 1103515245u + 12345u;
        snprintf(e[i].name, sizeof e[i].name, "n%08x", x);
        e[i].value = x % 1000;
    }
    qsort(e, 5000, sizeof *e, by_name);
    unsigned long sum = 0;
    for (int i = 0; i < 5000; i += 500)
        printf("%s %u\n", e[i].name, e[i].value);
    for (int i = 0; i < 5000; i++)
        sum = sum * 31 + e[i].value;
    printf("checksum %lu\n", sum);
    free(e);
    return 0;
}
