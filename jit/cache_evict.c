/* The compile cache's usage and eviction: which names in the directory are
 * maskjit's, their sizes (maskjit cache), and pruning least recently used
 * entries and abandoned temp files. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "src/core/internal.h"

/* What a name in the cache directory is. Only these names are ever
 * deleted by eviction, prune and clear. */
typedef enum { NAME_OTHER, NAME_ENTRY, NAME_OLD_ENTRY, NAME_TEMP } name_kind;

static name_kind classify(const char *name) {
    size_t l = strlen(name);
    if (l > 65 && mj_cache_all_hex(name, 64) && name[64] == '.') {
        if (strcmp(name + 65, "mjc") == 0) return NAME_ENTRY;
        /* the object and bitcode files of the first format */
        if (strcmp(name + 65, "o") == 0 || strcmp(name + 65, "bc") == 0) return NAME_OLD_ENTRY;
        return NAME_OTHER;
    }
    /* store's mkstemp names: "." 16 hex "." and 6 letters or digits */
    if (l == 24 && name[0] == '.' && mj_cache_all_hex(name + 1, 16) && name[17] == '.') {
        for (size_t i = 18; i < 24; i++)
            if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'z') ||
                  (name[i] >= 'A' && name[i] <= 'Z')))
                return NAME_OTHER;
        return NAME_TEMP;
    }
    return NAME_OTHER;
}

/* n bytes from fd; false on a short read or an error */
/* ---- usage, eviction ------------------------------------------------------------ */

typedef struct scan_item {
    char name[72];
    name_kind kind;
    uint64_t size;
    struct timespec mtime;
    dev_t dev;
    ino_t ino;
} scan_item;

typedef struct scan {
    DIR *d; /* NULL: no directory (yet) */
    scan_item *items;
    size_t n, cap;
} scan;

static void scan_free(scan *sc) {
    if (sc->d) closedir(sc->d);
    free(sc->items);
}

static void count(mj_cache_usage *u, name_kind k, uint64_t size) {
    if (k == NAME_TEMP) {
        u->temp_files++;
        u->temp_bytes += size;
        return;
    }
    u->entries++;
    u->bytes += size;
    if (k == NAME_OLD_ENTRY) u->old_entries++;
}

/* Lists the regular files in dir that are maskjit's (a missing directory is
 * an empty one) into *u, with the number of abandoned temp files in *stale.
 * With collect, sc->items lists them: only eviction needs that, so a store
 * under the cap allocates nothing. Never opens a file: lstat only. */
static mj_status scan_dir(const char *dir, bool collect, scan *sc, mj_cache_usage *u, int64_t *stale) {
    memset(sc, 0, sizeof *sc);
    memset(u, 0, sizeof *u);
    *stale = 0;
    sc->d = opendir(dir); /* O_DIRECTORY: a FIFO at dir's name fails, no hang */
    if (!sc->d) {
        if (errno == ENOENT) return MJ_OK;
        return mj_fail(MJ_ERR_IO, "cache: cannot read the directory %s: %s", dir, strerror(errno));
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int dfd = dirfd(sc->d);
    struct dirent *e;
    while ((e = readdir(sc->d))) {
        name_kind k = classify(e->d_name);
        struct stat st;
        /* vanished under us, or not a regular file: not ours to count */
        if (k == NAME_OTHER || fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        count(u, k, (uint64_t)st.st_size);
        if (k == NAME_TEMP && now.tv_sec - st.st_mtim.tv_sec >= MJ_CACHE_TEMP_STALE_S) ++*stale;
        if (!collect) continue;
        if (sc->n == sc->cap) {
            size_t cap = sc->cap ? sc->cap * 2 : 64;
            scan_item *p = realloc(sc->items, cap * sizeof *p);
            if (!p) {
                scan_free(sc);
                memset(sc, 0, sizeof *sc);
                return mj_fail(MJ_ERR_NOMEM, "cache: out of memory listing %s", dir);
            }
            sc->items = p;
            sc->cap = cap;
        }
        scan_item *it = &sc->items[sc->n++];
        snprintf(it->name, sizeof it->name, "%s", e->d_name);
        it->kind = k;
        it->size = (uint64_t)st.st_size;
        it->mtime = st.st_mtim;
        it->dev = st.st_dev;
        it->ino = st.st_ino;
    }
    return MJ_OK;
}

mj_status mj_cache_usage_of(const char *dir, mj_cache_usage *u) {
    scan sc;
    int64_t stale;
    mj_status s = scan_dir(dir, false, &sc, u, &stale);
    scan_free(&sc);
    return s;
}

static int by_mtime(const void *a, const void *b) {
    const scan_item *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec) return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec) return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
    return strcmp(x->name, y->name);
}

static bool same_time(struct timespec a, struct timespec b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }

mj_status mj_cache_prune(const char *dir, uint64_t max_bytes, mj_cache_usage *removed) {
    memset(removed, 0, sizeof *removed);
    scan sc;
    mj_cache_usage u;
    int64_t stale;
    MJ_TRY(scan_dir(dir, false, &sc, &u, &stale));
    scan_free(&sc);
    if (u.bytes <= max_bytes && stale == 0) return MJ_OK; /* the common case after a store */
    MJ_TRY(scan_dir(dir, true, &sc, &u, &stale));
    if (!sc.d) return MJ_OK;
    qsort(sc.items, sc.n, sizeof *sc.items, by_mtime);
    int dfd = dirfd(sc.d);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t total = u.bytes;
    mj_status s = MJ_OK;
    for (size_t i = 0; i < sc.n; i++) {
        const scan_item *it = &sc.items[i];
        if (it->kind == NAME_TEMP ? now.tv_sec - it->mtime.tv_sec < MJ_CACHE_TEMP_STALE_S : total <= max_bytes)
            continue;
        /* Other processes share the directory: a file that changed since
         * the scan was used (a hit touches it) or replaced, so it stays;
         * one that is gone is no longer counted. */
        struct stat st;
        if (fstatat(dfd, it->name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (it->kind != NAME_TEMP) total -= it->size;
            continue;
        }
        if (!S_ISREG(st.st_mode) || st.st_dev != it->dev || st.st_ino != it->ino || !same_time(st.st_mtim, it->mtime))
            continue;
        if (unlinkat(dfd, it->name, 0) != 0) {
            if (errno == ENOENT) {
                if (it->kind != NAME_TEMP) total -= it->size;
            } else if (s == MJ_OK) {
                s = mj_fail(MJ_ERR_IO, "cache: cannot remove %s/%s: %s", dir, it->name, strerror(errno));
            }
            continue;
        }
        count(removed, it->kind, it->size);
        if (it->kind != NAME_TEMP) total -= it->size;
    }
    scan_free(&sc);
    return s;
}

mj_status mj_cache_clear(const char *dir, mj_cache_usage *removed) { return mj_cache_prune(dir, 0, removed); }
