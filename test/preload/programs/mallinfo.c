/*
 * mallinfo and mallinfo2 after known allocations: mallinfo must report the same figures as
 * mallinfo2, each converted to int as glibc does (modulo 2^32: glibc 2.36 truncates, it does
 * not clamp), and they must count what was allocated. An allocator that replaces mallinfo2
 * but not mallinfo leaves the program reading glibc's untouched arena.
 *
 * Prints one line on stdout and exits 0 when everything holds; otherwise names the first
 * figure that does not, and exits 1.
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* mallinfo is what is tested */

static int failures;

static void same(const char *name, int old, size_t now)
{
    if (old != (int)(unsigned)now) {
        printf("mallinfo().%s = %d, mallinfo2().%s = %zu\n", name, old, name, now);
        failures++;
    }
}

/* Both read with nothing allocated in between. */
static void compare(void)
{
    struct mallinfo2 m2 = mallinfo2();
    struct mallinfo m = mallinfo();
    same("arena", m.arena, m2.arena);
    same("ordblks", m.ordblks, m2.ordblks);
    same("smblks", m.smblks, m2.smblks);
    same("hblks", m.hblks, m2.hblks);
    same("hblkhd", m.hblkhd, m2.hblkhd);
    same("usmblks", m.usmblks, m2.usmblks);
    same("fsmblks", m.fsmblks, m2.fsmblks);
    same("uordblks", m.uordblks, m2.uordblks);
    same("fordblks", m.fordblks, m2.fordblks);
    same("keepcost", m.keepcost, m2.keepcost);
}

int main(void)
{
    enum { SMALL = 100, MEDIUM = 10 };
    void *small[SMALL], *medium[MEDIUM];
    for (int i = 0; i < SMALL; i++)
        memset(small[i] = malloc(100), 1, 100);
    for (int i = 0; i < MEDIUM; i++)
        memset(medium[i] = malloc(50000), 2, 50000);
    char *huge = malloc(5 << 20);
    memset(huge, 3, 4096);
    compare();

    struct mallinfo m = mallinfo();
    if (m.uordblks < SMALL * 100 + MEDIUM * 50000) {
        printf("mallinfo().uordblks = %d: less than the %d bytes in use\n", m.uordblks,
               SMALL * 100 + MEDIUM * 50000);
        failures++;
    }
    if (m.hblks < 1 || m.hblkhd < 5 << 20) {
        printf("mallinfo() counts %d mapped blocks of %d bytes: the 5 MiB block is missing\n",
               m.hblks, m.hblkhd);
        failures++;
    }
    if (m.arena <= 0) {
        printf("mallinfo().arena = %d\n", m.arena);
        failures++;
    }

    /* A figure beyond INT_MAX: an untouched 5 GiB block, when the system lets us map it. */
    char *beyond = malloc((size_t)5 << 30);
    if (beyond) {
        compare();
        if (mallinfo2().hblkhd < (size_t)5 << 30) {
            printf("mallinfo2().hblkhd = %zu: the 5 GiB block is missing\n", mallinfo2().hblkhd);
            failures++;
        }
        free(beyond);
    }

    for (int i = 0; i < SMALL; i++)
        free(small[i]);
    for (int i = 0; i < MEDIUM; i++)
        free(medium[i]);
    free(huge);
    compare();
    if (failures)
        return 1;
    printf("mallinfo agrees with mallinfo2\n");
    return 0;
}
