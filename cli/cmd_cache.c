/* maskjit cache stats|clear|prune: look at and trim the compile cache
 * (docs/cache.md). Only maskjit's own files in the directory are counted or
 * removed (jit/cache_evict.c decides by name and file type). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "jit/cache.h"

static const char DIR_DETAILS[] =
    "The directory is --dir DIR, else $MASKJIT_CACHE_DIR, else\n"
    "$XDG_CACHE_HOME/maskjit, else $HOME/.cache/maskjit (also with MASKJIT_CACHE=0).\n"
    "Only maskjit's entry files (and writers' temp files abandoned for an hour)\n"
    "are ever removed; anything else in the directory is left alone.\n";

static const struct {
    const char *name, *summary;
} SUBS[] = {
    {"stats", "the directory, its entries and their size, and the size cap"},
    {"clear", "remove every entry"},
    {"prune", "remove least-recently-used entries down to a size (--max-mb N)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: maskjit cache <stats|clear|prune> [options]   (maskjit cache <sub> --help)\n\n"
               "Inspect or trim the compile cache.\n\nsubcommands:\n");
    for (size_t i = 0; i < sizeof SUBS / sizeof SUBS[0]; i++) fprintf(f, "  %-7s %s\n", SUBS[i].name, SUBS[i].summary);
    fprintf(f, "\n%s", DIR_DETAILS);
}

/* dir_opt, or the default directory (malloc'd); NULL after an error message */
static char *cache_dir(const char *cmd, const char *dir_opt) {
    char *d = dir_opt ? strdup(dir_opt) : mj_cache_default_dir();
    if (!d)
        cli_error(cmd, CLI_USAGE, "no cache directory: set MASKJIT_CACHE_DIR or HOME, or pass --dir DIR");
    return d;
}

/* "812 bytes", "27.3 KiB", "3.4 MiB", "1.2 GiB" */
static const char *human(uint64_t b, char buf[32]) {
    if (b < 1024) snprintf(buf, 32, "%llu bytes", (unsigned long long)b);
    else if (b < (1u << 20)) snprintf(buf, 32, "%.1f KiB", (double)b / 1024.0);
    else if (b < (1u << 30)) snprintf(buf, 32, "%.1f MiB", (double)b / (1024.0 * 1024.0));
    else snprintf(buf, 32, "%.1f GiB", (double)b / (1024.0 * 1024.0 * 1024.0));
    return buf;
}

static int sub_stats(int argc, char **argv) {
    static const cli_command cmd = {"cache stats", "[options]",
                                    "Show the compile cache: its directory, entries, their size and the size "
                                    "cap.",
                                    NULL};
    const char *dir_opt = NULL;
    const cli_opt opts[] = {{"--dir", OPT_STRING, &dir_opt, "the cache directory (default: see above)"}};
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), DIR_DETAILS, NULL, &rc)) return rc;
    uint64_t cap;
    if (mj_cache_max_bytes(&cap) != MJ_OK) return cli_error(cmd.name, CLI_USAGE, "%s", mj_last_error());
    char *dir = cache_dir(cmd.name, dir_opt);
    if (!dir) return CLI_USAGE;
    mj_cache_usage u;
    if (mj_cache_usage_of(dir, &u) != MJ_OK) {
        free(dir);
        return cli_mj_error(cmd.name, "reading the cache");
    }
    struct stat st;
    if (stat(dir, &st) == 0) printf("directory: %s (mode %04o)\n", dir, (unsigned)(st.st_mode & 07777));
    else printf("directory: %s (%s)\n", dir, errno == ENOENT ? "not created yet" : strerror(errno));
    printf("entries: %lld\n", (long long)u.entries);
    char h[32];
    printf("bytes: %llu (%s)\n", (unsigned long long)u.bytes, human(u.bytes, h));
    const char *env = getenv("MASKJIT_CACHE_MAX_MB");
    if (!cap) printf("cap: none (MASKJIT_CACHE_MAX_MB=0)\n");
    else
        printf("cap: %llu MiB (%s)\n", (unsigned long long)(cap >> 20),
               env && *env ? "MASKJIT_CACHE_MAX_MB" : "default");
    if (u.old_entries)
        printf("older format: %lld of the entries (never read by this version)\n", (long long)u.old_entries);
    if (u.temp_files)
        printf("temp files: %lld (%llu bytes)\n", (long long)u.temp_files, (unsigned long long)u.temp_bytes);
    const char *off = getenv("MASKJIT_CACHE");
    if (off && strcmp(off, "0") == 0) printf("note: MASKJIT_CACHE=0: compiles neither read nor write the cache\n");
    free(dir);
    return CLI_OK;
}

static int report(const char *cmd, const char *dir, const mj_cache_usage *r) {
    mj_cache_usage left;
    if (mj_cache_usage_of(dir, &left) != MJ_OK) return cli_mj_error(cmd, "reading the cache");
    char h1[32], h2[32];
    printf("removed %lld entries (%s)", (long long)r->entries, human(r->bytes, h1));
    if (r->temp_files) printf(" and %lld abandoned temp files", (long long)r->temp_files);
    printf(" from %s; %lld entries (%s) left\n", dir, (long long)left.entries, human(left.bytes, h2));
    return CLI_OK;
}

static int sub_clear(int argc, char **argv) {
    static const cli_command cmd = {"cache clear", "[options]",
                                    "Remove every entry of the compile cache (compiles rebuild them).", NULL};
    const char *dir_opt = NULL;
    const cli_opt opts[] = {{"--dir", OPT_STRING, &dir_opt, "the cache directory (default: see above)"}};
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), DIR_DETAILS, NULL, &rc)) return rc;
    char *dir = cache_dir(cmd.name, dir_opt);
    if (!dir) return CLI_USAGE;
    mj_cache_usage r;
    rc = mj_cache_clear(dir, &r) == MJ_OK ? report(cmd.name, dir, &r) : cli_mj_error(cmd.name, "clearing");
    free(dir);
    return rc;
}

static int sub_prune(int argc, char **argv) {
    static const cli_command cmd = {
        "cache prune", "[--max-mb N] [options]",
        "Remove least-recently-used entries until the cache holds at most N MiB\n"
        "(0 keeps none). Without --max-mb: the cap compiles keep, MASKJIT_CACHE_MAX_MB\n"
        "or 1024 MiB (MASKJIT_CACHE_MAX_MB=0, no cap: only abandoned temp files go).",
        NULL};
    const char *dir_opt = NULL;
    int64_t max_mb = -1;
    const cli_opt opts[] = {
        {"--max-mb", OPT_INT, &max_mb, "keep at most N MiB of entries"},
        {"--dir", OPT_STRING, &dir_opt, "the cache directory (default: see above)"},
    };
    int rc;
    if (!cli_parse_args(&cmd, argc, argv, opts, CLI_N_OPTS(opts), DIR_DETAILS, NULL, &rc)) return rc;
    uint64_t max;
    if (max_mb >= 0) {
        max = (uint64_t)max_mb << 20; /* cli_parse bounds N by 2^40 */
    } else {
        if (mj_cache_max_bytes(&max) != MJ_OK) return cli_error(cmd.name, CLI_USAGE, "%s", mj_last_error());
        if (!max) max = UINT64_MAX;
    }
    char *dir = cache_dir(cmd.name, dir_opt);
    if (!dir) return CLI_USAGE;
    mj_cache_usage r;
    rc = mj_cache_prune(dir, max, &r) == MJ_OK ? report(cmd.name, dir, &r) : cli_mj_error(cmd.name, "pruning");
    free(dir);
    return rc;
}

int cmd_cache(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return cli_error("cache", CLI_USAGE, "missing a subcommand: stats, clear or prune");
    }
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
        usage(stdout);
        return CLI_OK;
    }
    if (strcmp(sub, "stats") == 0) return sub_stats(argc - 1, argv + 1);
    if (strcmp(sub, "clear") == 0) return sub_clear(argc - 1, argv + 1);
    if (strcmp(sub, "prune") == 0) return sub_prune(argc - 1, argv + 1);
    return cli_error("cache", CLI_USAGE, "unknown subcommand '%s': stats, clear or prune (see maskjit cache --help)",
                     sub);
}
