/*
 * host — a C program (no C++ runtime of its own) that loads a C++ module with
 * dlopen(RTLD_LOCAL) and runs it: host <module.so>
 */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    if (dlsym(RTLD_DEFAULT, "_ZSt15get_new_handlerv") != NULL) {
        printf("a C++ runtime is in the global scope before the module\n");
        return 1;
    }
    void *m = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (m == NULL) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    int (*run)(char *, size_t) = (int (*)(char *, size_t))dlsym(m, "module_run");
    if (run == NULL)
        return 1;
    char out[256];
    int r = run(out, sizeof out);
    printf("%s\n", out);
    return r;
}
