/*
 * structs - small nodes linked into structures and torn down again: a search tree
 * with string keys that is built, half deleted, refilled and freed in post-order, and
 * expression terms that are copied and dropped (the work of compilers, theorem
 * provers and interpreters).
 */
#include "wl.h"

typedef struct tnode {
    struct tnode *left, *right;
    uint64_t key;
    char *name;          /* 5..40 byte string owned by the node */
} tnode;

typedef struct term {
    uint32_t arity;
    uint32_t op;
    uint64_t value;
    struct term *kid[];  /* arity children */
} term;

static uint64_t sum;
static int bad;

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "structs: out of memory\n");
        exit(4);
    }
    return p;
}

/* ---- search tree ---------------------------------------------------------------------- */

static size_t name_len(uint64_t key) { return 5 + (size_t)(key % 36); }

static void fill_name(char *s, uint64_t key)
{
    size_t n = name_len(key);
    for (size_t i = 0; i + 1 < n; i++)
        s[i] = (char)('a' + (key >> (i % 13 * 4)) % 26);
    s[n - 1] = '\0';
}

static int name_ok(const char *s, uint64_t key)
{
    size_t n = name_len(key);
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] != (char)('a' + (key >> (i % 13 * 4)) % 26))
            return 0;
    return s[n - 1] == '\0';
}

static tnode *tree_insert(tnode *root, uint64_t key)
{
    tnode **at = &root;
    while (*at) {
        if (key == (*at)->key)
            return root;
        at = key < (*at)->key ? &(*at)->left : &(*at)->right;
    }
    tnode *n = xmalloc(sizeof *n);
    n->left = n->right = NULL;
    n->key = key;
    n->name = xmalloc(name_len(key));
    fill_name(n->name, key);
    *at = n;
    return root;
}

static void node_free(tnode *n)
{
    if (!name_ok(n->name, n->key))
        bad = 1;
    sum += wl_mix(n->key);
    free(n->name);
    free(n);
}

static tnode *tree_delete(tnode *root, uint64_t key)
{
    tnode **at = &root;
    while (*at && (*at)->key != key)
        at = key < (*at)->key ? &(*at)->left : &(*at)->right;
    tnode *n = *at;
    if (!n)
        return root;
    if (!n->left) {
        *at = n->right;
    } else if (!n->right) {
        *at = n->left;
    } else {
        /* Replace by the smallest node of the right subtree. */
        tnode **m = &n->right;
        while ((*m)->left)
            m = &(*m)->left;
        tnode *succ = *m;
        *m = succ->right;
        succ->left = n->left;
        succ->right = n->right;
        *at = succ;
    }
    node_free(n);
    return root;
}

/* In-order walk without recursion depth limits: an explicit stack. */
static uint64_t tree_walk(tnode *root)
{
    tnode *stack[4096];
    int top = 0;
    uint64_t h = 0, prev = 0;
    tnode *n = root;
    while (n || top) {
        while (n) {
            if (top == 4096) { bad = 1; return h; }
            stack[top++] = n;
            n = n->left;
        }
        n = stack[--top];
        if (n->key < prev)
            bad = 1;
        prev = n->key;
        h = h * 31 + n->key + (uint64_t)(unsigned char)n->name[0];
        n = n->right;
    }
    return h;
}

static void tree_free(tnode *n)
{
    /* Post-order through left rotations, no recursion. */
    while (n) {
        if (n->left) {
            tnode *l = n->left;
            n->left = l->right;
            l->right = n;
            n = l;
        } else {
            tnode *r = n->right;
            node_free(n);
            n = r;
        }
    }
}

/* ---- expression terms ------------------------------------------------------------------- */

static term *term_build(wl_rng *r, int depth)
{
    uint32_t arity = depth >= 9 ? 0 : wl_below(r, 4) == 0 ? 0 : 1 + wl_below(r, 3);
    term *t = xmalloc(sizeof *t + arity * sizeof(term *));
    t->arity = arity;
    t->op = wl_below(r, 7);
    t->value = arity ? 0 : wl_next(r) % 1000;
    for (uint32_t i = 0; i < arity; i++)
        t->kid[i] = term_build(r, depth + 1);
    return t;
}

static uint64_t term_eval(const term *t)
{
    if (!t->arity)
        return t->value;
    uint64_t v = t->op;
    for (uint32_t i = 0; i < t->arity; i++)
        v = v * 1000003 + term_eval(t->kid[i]);
    return v;
}

static term *term_copy(const term *t)
{
    term *c = xmalloc(sizeof *c + t->arity * sizeof(term *));
    c->arity = t->arity;
    c->op = t->op;
    c->value = t->value;
    for (uint32_t i = 0; i < t->arity; i++)
        c->kid[i] = term_copy(t->kid[i]);
    return c;
}

static void term_free(term *t)
{
    for (uint32_t i = 0; i < t->arity; i++)
        term_free(t->kid[i]);
    free(t);
}

int main(int argc, char **argv)
{
    wl_args a = wl_parse(argc, argv, "small nodes built into structures and torn down");
    wl_rng r = wl_rng_make(a.seed, 2);
    uint64_t reps = wl_count(a.scale, 40, 1);

    for (uint64_t rep = 0; rep < reps; rep++) {
        /* Tree: build, delete half, refill, walk, tear down. */
        enum { KEYS = 60000 };
        tnode *root = NULL;
        static uint64_t keys[KEYS];
        for (int i = 0; i < KEYS; i++) {
            keys[i] = wl_next(&r) >> 20;
            root = tree_insert(root, keys[i]);
        }
        for (int i = 0; i < KEYS; i += 2)
            root = tree_delete(root, keys[(i * 7919) % KEYS]);
        for (int i = 0; i < KEYS / 2; i++)
            root = tree_insert(root, wl_next(&r) >> 20);
        sum += tree_walk(root);
        tree_free(root);

        /* Terms: build a forest, copy each term, drop originals and copies at different times. */
        enum { FOREST = 64 };
        term *orig[FOREST], *copy[FOREST];
        for (int i = 0; i < FOREST; i++)
            orig[i] = term_build(&r, 0);
        for (int i = 0; i < FOREST; i++) {
            copy[i] = term_copy(orig[i]);
            if (i % 2)
                term_free(orig[i]), orig[i] = NULL;
        }
        for (int i = 0; i < FOREST; i++) {
            uint64_t v = term_eval(copy[i]);
            if (orig[i]) {
                if (term_eval(orig[i]) != v)
                    bad = 1;
                term_free(orig[i]);
            }
            sum += v;
            term_free(copy[i]);
        }
    }
    return wl_report(sum, bad);
}
