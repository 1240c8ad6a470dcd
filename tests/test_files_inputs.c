/* Files and inputs: what --out / -o and mj_safetensors_save do to symlinks,
 * devices, FIFOs, sockets and file modes; the limits of numeric CLI flags;
 * mask keys on any Linear parameter; one tensor under two keys; state dicts
 * of parametrized buffers. References: the bytes and tensors the test wrote
 * itself, stat(2) of the paths, naive loops, and PyTorch's key rules
 * (register_buffer makes a parametrized buffer's original persistent). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "maskjit.h"
#include "test_util.h"

static const char *const BIN = MJ_BUILD_ROOT "/maskjit";

/* ---- helpers ---------------------------------------------------------------- */

/* Each test's scratch directory (the suite's init makes it, its fini
 * removes it) and the paths in it that at() handed out (the fini frees them). */
static char *dir;
static char *paths[16];
static int n_paths;

static void make_dir(void) { dir = mjt_temp_dir("mj-files"); }

static void rm_dir(void) {
    mjt_rm_temp(dir);
    while (n_paths > 0) free(paths[--n_paths]);
}

TestSuite(files, .init = make_dir, .fini = rm_dir);

/* dir/name */
static char *at(const char *name) {
    cr_assert_lt(n_paths, 16);
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return paths[n_paths++] = p;
}

/* Runs a shell command line; returns its exit status, its stdout in *out
 * (malloc'd, length in *len when not NULL). */
static int sh(char **out, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int sh(char **out, size_t *len, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return mjt_shell_len(out, len, cmd);
}

/* `maskjit ARGS` with stderr folded into *out; a 20 s timeout so a hang
 * shows as a failure, not a stuck suite. */
static int cli(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cli(char **out, const char *fmt, ...) {
    char args[3000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    return sh(out, NULL, "NO_COLOR=1 timeout 20 %s %s 2>&1", BIN, args);
}

static mj_tensor_dict *dict_of(int64_t n, float base) {
    mj_tensor_dict *d;
    OK(mj_tensor_dict_new(&d));
    mj_tensor *t;
    OK(mj_tensor_zeros(&t, 1, &n));
    float *p = mj_tensor_data_mut(t);
    for (int64_t i = 0; i < n; i++) p[i] = base + (float)i;
    OK(mj_tensor_dict_set(d, "w", t));
    mj_tensor_release(t);
    return d;
}

static bool file_holds(const char *path, const mj_tensor_dict *want) {
    mj_tensor_dict *d;
    if (mj_safetensors_load(path, &d) != MJ_OK) return false;
    bool same = mj_tensor_equal(mj_tensor_dict_get(d, "w"), mj_tensor_dict_get(want, "w"));
    mj_tensor_dict_free(d);
    return same;
}

/* Entries of dir whose name contains ".tmp." (leftover temporary files). */
static int count_tmp(const char *dir) {
    char *out;
    sh(&out, NULL, "ls -a '%s' | grep -c '\\.tmp\\.'", dir);
    int n = atoi(out);
    free(out);
    return n;
}

static mode_t mode_of(const char *path) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s: %s", path, strerror(errno));
    return st.st_mode & 07777;
}

/* path itself (not what it links to) is of the kind S_IFLNK, S_IFREG, ... */
static void assert_kind(const char *path, mode_t kind) {
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0, "lstat %s: %s", path, strerror(errno));
    cr_assert_eq(st.st_mode & S_IFMT, kind, "%s is of the kind %o, not %o (it was replaced)", path,
                 (unsigned)(st.st_mode & S_IFMT), (unsigned)kind);
}

/* `maskjit ARGS` exits with rc and, when needle is not NULL, says needle. */
static void cli_expect(int rc, const char *needle, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void cli_expect(int rc, const char *needle, const char *fmt, ...) {
    char args[3000], *out;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    int got = cli(&out, "%s", args);
    cr_assert_eq(got, rc, "maskjit %s -> %d: %s", args, got, out);
    if (needle) cr_assert(strstr(out, needle), "maskjit %s: %s", args, out);
    free(out);
}

/* ---- symlinks ------------------------------------------------------------- */

/* The link stays a link to the same name; the target gets the new content. */
Test(files, out_through_a_symlink_replaces_the_target, .timeout = 60) {
    char *target = at("target.safetensors"),
         *link = at("link.safetensors");
    mj_tensor_dict *a = dict_of(4, 1.0f), *b = dict_of(4, 100.0f);
    OK(mj_safetensors_save(target, a));
    cr_assert_eq(symlink("target.safetensors", link), 0);
    OK(mj_safetensors_save(link, b));
    assert_kind(link, S_IFLNK);
    char buf[256];
    ssize_t n = readlink(link, buf, sizeof buf - 1);
    cr_assert_gt(n, 0);
    buf[n] = '\0';
    cr_assert_str_eq(buf, "target.safetensors");
    cr_assert(file_holds(target, b), "the target did not get the new content");
    cr_assert_eq(count_tmp(dir), 0);

    /* The CLI's --out and -o go the same way. */
    cli_expect(0, NULL, "run mlp:4,3 --out %s", link);
    assert_kind(link, S_IFLNK);
    mj_tensor_dict *d;
    OK(mj_safetensors_load(target, &d));
    cr_assert_not_null(mj_tensor_dict_get(d, "output"));
    mj_tensor_dict_free(d);
    cli_expect(0, NULL, "trace mlp:4,3 -o %s", link);
    assert_kind(link, S_IFLNK);
    mj_graph *g;
    OK(mj_graph_load(target, &g));
    mj_graph_free(g);

    /* A link whose target does not exist yet: the target is created. */
    char *sub = at("sub"), *dangling = at("dangling"),
         *made = at("sub/made.safetensors");
    cr_assert_eq(mkdir(sub, 0755), 0);
    cr_assert_eq(symlink("sub/made.safetensors", dangling), 0);
    OK(mj_safetensors_save(dangling, a));
    assert_kind(dangling, S_IFLNK);
    cr_assert(file_holds(made, a));
    cr_assert_eq(count_tmp(dir), 0);
    cr_assert_eq(count_tmp(sub), 0);

    /* A chain of links, the last one absolute. */
    char *l2 = at("l2"), *l3 = at("l3");
    cr_assert_eq(symlink(target, l2), 0);
    cr_assert_eq(symlink("l2", l3), 0);
    OK(mj_safetensors_save(l3, a));
    cr_assert(file_holds(target, a));
    assert_kind(l2, S_IFLNK);
    assert_kind(l3, S_IFLNK);

    /* A loop is an error that names the path, and changes nothing. */
    char *loop1 = at("loop1"), *loop2 = at("loop2");
    cr_assert_eq(symlink("loop2", loop1), 0);
    cr_assert_eq(symlink("loop1", loop2), 0);
    FAILS(mj_safetensors_save(loop1, a), MJ_ERR_IO, loop1);
    assert_kind(loop1, S_IFLNK);
    cr_assert_eq(count_tmp(dir), 0);

    mj_tensor_dict_free(a);
    mj_tensor_dict_free(b);
}

/* ---- FIFOs, devices, sockets, directories ------------------------------------ */

/* No reader: an error at once (O_NONBLOCK open), never a hang; the FIFO stays. */
Test(files, out_to_a_fifo_without_reader_fails_promptly, .timeout = 30) {
    char *fifo = at("pipe");
    cr_assert_eq(mkfifo(fifo, 0644), 0);
    mj_tensor_dict *a = dict_of(4, 1.0f);
    FAILS(mj_safetensors_save(fifo, a), MJ_ERR_IO, "no reader");
    cr_assert(strstr(mj_last_error(), fifo), "%s", mj_last_error());
    assert_kind(fifo, S_IFIFO);
    cr_assert_eq(count_tmp(dir), 0);

    cli_expect(1, "no reader", "run mlp:4,3 --out %s", fifo);
    cli_expect(1, "no reader", "trace mlp:4,3 -o %s", fifo);
    assert_kind(fifo, S_IFIFO);
    mj_tensor_dict_free(a);
}

/* With a reader, the bytes go through the FIFO and parse back. */
Test(files, out_to_a_fifo_with_reader_writes_through, .timeout = 30) {
    char *fifo = at("pipe");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    int rfd = open(fifo, O_RDONLY | O_NONBLOCK);
    cr_assert_geq(rfd, 0);
    mj_tensor_dict *a = dict_of(64, 3.0f); /* well below the pipe's buffer */
    OK(mj_safetensors_save(fifo, a));
    unsigned char buf[8192];
    ssize_t n = read(rfd, buf, sizeof buf);
    cr_assert_gt(n, 0);
    close(rfd);
    mj_tensor_dict *back;
    OK(mj_safetensors_parse(buf, (size_t)n, &back));
    cr_assert(mj_tensor_equal(mj_tensor_dict_get(back, "w"), mj_tensor_dict_get(a, "w")));
    mj_tensor_dict_free(back);
    assert_kind(fifo, S_IFIFO);
    cr_assert_eq(count_tmp(dir), 0);
    mj_tensor_dict_free(a);
}

static void *close_later(void *arg) {
    usleep(100 * 1000);
    close(*(int *)arg);
    return NULL;
}

/* A reader that goes away mid-write: an error, not a SIGPIPE that kills the
 * process (the test runs in its own process: a signal would show as a crash). */
Test(files, out_to_a_fifo_whose_reader_leaves, .timeout = 30) {
    char *fifo = at("pipe");
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    int rfd = open(fifo, O_RDONLY | O_NONBLOCK);
    cr_assert_geq(rfd, 0);
    mj_tensor_dict *big = dict_of(1 << 20, 0.0f); /* 4 MiB: fills the pipe, then blocks */
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, close_later, &rfd), 0);
    FAILS(mj_safetensors_save(fifo, big), MJ_ERR_IO, "reader went away");
    pthread_join(th, NULL);
    assert_kind(fifo, S_IFIFO);
    mj_tensor_dict_free(big);
}

/* --out /dev/stdout: the safetensors bytes on stdout, whether stdout is a
 * pipe (written through) or a regular file (replaced atomically). The test
 * uses its own link to /proc/self/fd/1 (what /dev/stdout is), so a broken
 * save can only replace that link, never the system's /dev/stdout. */
Test(files, out_to_dev_stdout, .timeout = 60) {
    char *stdout_link = at("stdout");
    cr_assert_eq(symlink("/proc/self/fd/1", stdout_link), 0);
    char *out;
    size_t len;
    cr_assert_eq(sh(&out, &len, "NO_COLOR=1 %s run mlp:4,3 --seed 2 --out %s 2>/dev/null", BIN,
                    stdout_link),
                 0);
    mj_tensor_dict *piped;
    OK(mj_safetensors_parse(out, len, &piped));
    free(out);
    mj_tensor *want = NULL;
    {
        mj_module *m;
        mj_rng r = mjt_rng(2);
        OK(mj_model_from_spec("mlp:4,3", &r, &m));
        mj_rng_seed(&r, 3); /* the CLI's random input: seed + 1 */
        mj_tensor *x;
        OK(mj_tensor_randn(&x, 2, (int64_t[]){3, 4}, &r));
        OK(mj_module_forward(m, x, &want));
        mj_tensor_release(x);
        mj_module_free(m);
    }
    cr_assert(mj_tensor_equal(mj_tensor_dict_get(piped, "output"), want));
    mj_tensor_dict_free(piped);
    assert_kind(stdout_link, S_IFLNK);

    char *file = at("stdout.safetensors");
    cr_assert_eq(sh(NULL, NULL, "NO_COLOR=1 %s run mlp:4,3 --seed 2 --out %s > %s", BIN, stdout_link,
                    file),
                 0);
    mj_tensor_dict *d;
    OK(mj_safetensors_load(file, &d));
    cr_assert(mj_tensor_equal(mj_tensor_dict_get(d, "output"), want));
    mj_tensor_dict_free(d);
    assert_kind(stdout_link, S_IFLNK);
    cr_assert_eq(count_tmp(dir), 0);
    mj_tensor_release(want);
}

/* A character device is written through and stays a device. Uses a null
 * device made in a temporary directory (root only), never the real /dev/null. */
Test(files, out_to_a_char_device_writes_through, .timeout = 60) {
    char *null = at("null");
    if (mknod(null, S_IFCHR | 0666, makedev(1, 3)) != 0) {
        cr_log_warn("mknod: %s; skipping the device part", strerror(errno));
        return;
    }
    mj_tensor_dict *a = dict_of(4, 1.0f);
    OK(mj_safetensors_save(null, a));
    assert_kind(null, S_IFCHR);
    struct stat st;
    cr_assert_eq(lstat(null, &st), 0);
    cr_assert_eq(st.st_rdev, makedev(1, 3));
    cli_expect(0, NULL, "run mlp:4,3 --out %s", null);
    cli_expect(0, NULL, "trace mlp:4,3 -o %s", null);
    /* and through a symlink to it */
    char *link = at("nul-link");
    cr_assert_eq(symlink(null, link), 0);
    cli_expect(0, NULL, "run mlp:4,3 --out %s", link);
    assert_kind(null, S_IFCHR);
    assert_kind(link, S_IFLNK);
    cr_assert_eq(count_tmp(dir), 0);
    mj_tensor_dict_free(a);
}

Test(files, out_to_a_directory_or_socket_is_refused, .timeout = 30) {
    char *sub = at("sub"), *sock = at("sock");
    cr_assert_eq(mkdir(sub, 0755), 0);
    mj_tensor_dict *a = dict_of(4, 1.0f);
    FAILS(mj_safetensors_save(sub, a), MJ_ERR_IO, "is a directory");
    cr_assert(strstr(mj_last_error(), sub), "%s", mj_last_error());
    assert_kind(sub, S_IFDIR);

    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock);
    cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0, "%s", strerror(errno));
    FAILS(mj_safetensors_save(sock, a), MJ_ERR_IO, "socket");
    assert_kind(sock, S_IFSOCK);
    close(fd);

    cli_expect(1, "is a directory", "run mlp:4,3 --out %s", sub);
    cr_assert_eq(count_tmp(dir), 0);
    cr_assert_eq(count_tmp(sub), 0);
    mj_tensor_dict_free(a);
}

/* ---- file modes ------------------------------------------------------------ */

Test(files, replaced_file_keeps_its_mode, .timeout = 60) {
    char *path = at("m.safetensors");
    mj_tensor_dict *a = dict_of(4, 1.0f), *b = dict_of(4, 2.0f);
    const mode_t modes[] = {0600, 0640, 0604, 0755};
    for (int i = 0; i < 4; i++) {
        OK(mj_safetensors_save(path, a));
        cr_assert_eq(chmod(path, modes[i]), 0);
        OK(mj_safetensors_save(path, b));
        cr_assert_eq(mode_of(path), modes[i], "mode %o became %o", (unsigned)modes[i],
                     (unsigned)mode_of(path));
        cr_assert(file_holds(path, b));
    }
    /* Owner and group stay too, where the process may set them (root). */
    if (geteuid() == 0) {
        cr_assert_eq(chown(path, 4321, 4322), 0);
        OK(mj_safetensors_save(path, a));
        struct stat st;
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_uid, 4321);
        cr_assert_eq(st.st_gid, 4322);
    }
    /* the CLI too */
    cr_assert_eq(chmod(path, 0600), 0);
    cli_expect(0, NULL, "run mlp:4,3 --out %s", path);
    cr_assert_eq(mode_of(path), 0600);
    cli_expect(0, NULL, "trace mlp:4,3 -o %s", path);
    cr_assert_eq(mode_of(path), 0600);
    mj_tensor_dict_free(a);
    mj_tensor_dict_free(b);
}

/* A new file gets 0666 & ~umask, like any file a program creates. */
Test(files, new_file_follows_the_umask, .timeout = 60) {
    mj_tensor_dict *a = dict_of(4, 1.0f);
    const mode_t masks[] = {077, 022, 027, 002};
    mode_t old = umask(022);
    for (int i = 0; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "new%d.safetensors", i);
        char *path = at(name);
        umask(masks[i]);
        OK(mj_safetensors_save(path, a));
        umask(022);
        cr_assert_eq(mode_of(path), 0666 & ~masks[i], "umask %03o: mode %o", (unsigned)masks[i],
                     (unsigned)mode_of(path));
    }
    umask(old);
    char *out, *t = at("trace.safetensors"), *r = at("run.safetensors");
    cr_assert_eq(sh(&out, NULL, "umask 077 && %s trace mlp:4,3 -o %s 2>&1", BIN, t), 0, "%s", out);
    free(out);
    cr_assert_eq(mode_of(t), 0600);
    cr_assert_eq(sh(&out, NULL, "umask 022 && %s run mlp:4,3 --out %s 2>&1", BIN, r), 0, "%s", out);
    free(out);
    cr_assert_eq(mode_of(r), 0644);
    mj_tensor_dict_free(a);
}

/* ---- numeric flags ----------------------------------------------------------- */

/* Each bad value: exit 2 and a message naming the flag. */
static void expect_usage(const char *flag, const char *cmd_fmt, const char *value) {
    char args[512], *out;
    snprintf(args, sizeof args, cmd_fmt, flag, value);
    int rc = cli(&out, "%s", args);
    cr_assert_eq(rc, 2, "maskjit %s -> %d: %s", args, rc, out);
    cr_assert(strstr(out, flag), "maskjit %s: message lacks %s: %s", args, flag, out);
    free(out);
}

Test(files, threads_out_of_range_is_a_usage_error, .timeout = 120) {
    const char *bad[] = {"4294967297", "2147483648", "-1", "0", "1025", "4x",
                         "",           " 3",         "+3", "0x4", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        expect_usage("--threads", "run mlp:4,3 --mode compiled %s '%s'", bad[i]);
    }
    expect_usage("--threads", "run mlp:4,3 --mode compiled %s=%s", "4294967297");
    cli_expect(0, NULL, "run mlp:4,3 --mode compiled --threads 2");
}

Test(files, every_numeric_flag_has_limits, .timeout = 300) {
    const char *huge = "4294967297", *wrap = "18446744073709551617";
    /* run */
    const char *run_batch[] = {"0", "-1", "4x", huge, wrap};
    for (int i = 0; i < 5; i++) expect_usage("--batch", "run mlp:4,3 %s '%s'", run_batch[i]);
    const char *seeds[] = {"-1", "4x", wrap, "9223372036854775808"};
    for (int i = 0; i < 4; i++) {
        expect_usage("--seed", "run mlp:4,3 %s '%s'", seeds[i]);
        expect_usage("--seed", "ir mlp:4,3 %s '%s'", seeds[i]);
        expect_usage("--seed", "trace mlp:4,3 -o /nonexistent/x %s '%s'", seeds[i]);
        expect_usage("--seed", "asm mlp:4,3 %s '%s'", seeds[i]);
        expect_usage("--seed", "check mlp:4,3 %s '%s'", seeds[i]);
    }
    /* check */
    const char *inputs[] = {"-1", "1001", huge, "4x"};
    for (int i = 0; i < 4; i++) expect_usage("--inputs", "check mlp:4,3 %s '%s'", inputs[i]);
    const char *check_batch[] = {"0", "-1", huge, "4x"};
    for (int i = 0; i < 4; i++) expect_usage("--batch", "check mlp:4,3 %s '%s'", check_batch[i]);
    const char *tols[] = {"-1", "4x", "1e-5x", "nan", "inf", "", "1e999"};
    for (int i = 0; i < 7; i++) {
        expect_usage("--rtol", "check mlp:4,3 %s '%s'", tols[i]);
        expect_usage("--atol", "check mlp:4,3 %s '%s'", tols[i]);
    }
    /* the largest accepted values still work */
    cli_expect(0, NULL, "run mlp:4,3 --seed 9223372036854775807 --batch 2");
    cli_expect(0, NULL, "check mlp:4,3 --inputs 2 --rtol 0.5 --atol 1e-3 --batch 5");
}

/* ---- mask keys ----------------------------------------------------------------- */

static mj_tensor *vec(int64_t n, const float *v) {
    mj_tensor *t;
    OK(mj_tensor_from_data(&t, 1, &n, v));
    return t;
}

static mj_tensor *mat(int64_t r, int64_t c, const float *v) {
    mj_tensor *t;
    OK(mj_tensor_from_data(&t, 2, (int64_t[]){r, c}, v));
    return t;
}

static void put(mj_tensor_dict *d, const char *key, mj_tensor *t) {
    OK(mj_tensor_dict_set(d, key, t));
    mj_tensor_release(t);
}

/* mlp:4,3 with act none: y = x W^T + mask_b * b, as a naive loop. */
static const float W[12] = {0.5f, -1.0f, 2.0f, 0.25f, 1.5f, 0.75f, -0.5f, 3.0f,
                            -2.0f, 1.0f, 0.125f, -0.75f};
static const float B[3] = {10.0f, -20.0f, 30.0f};
static const float BMASK[3] = {1.0f, 0.0f, 1.0f};
static const float X[8] = {1.0f, 2.0f, -1.0f, 0.5f, -3.0f, 0.25f, 4.0f, 1.0f};

static void naive(const float *wmask, const float *bmask, float y[6]) {
    for (int i = 0; i < 2; i++)
        for (int o = 0; o < 3; o++) {
            float acc = +0.0f;
            for (int k = 0; k < 4; k++)
                acc = acc + X[i * 4 + k] * (W[o * 4 + k] * (wmask ? wmask[o * 4 + k] : 1.0f));
            y[i * 3 + o] = acc + B[o] * (bmask ? bmask[o] : 1.0f);
        }
}

static void assert_output(const char *path, const float want[6]) {
    mj_tensor_dict *d;
    OK(mj_safetensors_load(path, &d));
    mj_tensor *y = mj_tensor_dict_get(d, "output");
    cr_assert_not_null(y);
    mj_tensor *w = mat(2, 3, want);
    cr_assert(mj_tensor_equal(y, w), "%s: output differs from the naive loop", path);
    mj_tensor_release(w);
    mj_tensor_dict_free(d);
}

/* A bias mask in a weights file is applied in every CLI mode. */
Test(files, bias_mask_is_applied_by_the_cli, .timeout = 120) {
    char *wf = at("w.safetensors"), *in = at("in.safetensors"),
         *out_path = at("out.safetensors"), *wf2 = at("w2.safetensors");
    const char *files[] = {wf, wf2};
    /* the bias under its plain key, then under its parametrized key */
    const char *bias_keys[] = {"0.bias", "0.parametrizations.bias.original"};
    mj_tensor_dict *d;
    for (int f = 0; f < 2; f++) {
        OK(mj_tensor_dict_new(&d));
        put(d, "0.weight", mat(3, 4, W));
        put(d, bias_keys[f], vec(3, B));
        put(d, "0.parametrizations.bias.0.mask", vec(3, BMASK));
        OK(mj_safetensors_save(files[f], d));
        mj_tensor_dict_free(d);
    }
    OK(mj_tensor_dict_new(&d));
    put(d, "input", mat(2, 4, X));
    OK(mj_safetensors_save(in, d));
    mj_tensor_dict_free(d);

    float want[6];
    naive(NULL, BMASK, want);
    const char *modes[] = {"eager", "traced", "compiled", "compiled --frozen", "compiled --fast"};
    for (int f = 0; f < 2; f++)
        for (int i = 0; i < 5; i++) {
            char *out;
            int rc = cli(&out, "run mlp:4,3:act=none --weights %s --input %s --mode %s --out %s",
                         files[f], in, modes[i], out_path);
            cr_assert_eq(rc, 0, "%s: %s", modes[i], out);
            free(out);
            assert_output(out_path, want);
        }
    cli_expect(0, NULL, "check mlp:4,3:act=none --weights %s --input %s", wf, in);
}

/* Library: a bias mask registers FakeSparsity on the bias; eager, traced,
 * compiled live and frozen agree with the naive loop, and live mode sees a
 * later change of the mask and of the bias. */
Test(files, bias_mask_in_live_and_frozen_modes, .timeout = 120) {
    mj_module *m;
    mj_rng r = mjt_rng(0);
    OK(mj_model_from_spec("mlp:4,3:act=none", &r, &m));
    mj_tensor_dict *sd;
    OK(mj_tensor_dict_new(&sd));
    put(sd, "0.weight", mat(3, 4, W));
    put(sd, "0.bias", vec(3, B));
    OK(mj_module_load_state_dict(m, sd, true, NULL));
    mj_tensor_dict_free(sd);
    const float WMASK[12] = {1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1};
    mj_tensor_dict *masks;
    OK(mj_tensor_dict_new(&masks));
    put(masks, "0.parametrizations.bias.0.mask", vec(3, BMASK));
    put(masks, "0.parametrizations.weight.0.mask", mat(3, 4, WMASK));
    OK(mj_model_apply_masks(m, masks, 1.0, NULL));
    mj_tensor_dict_free(masks);
    mj_module *lin = mj_module_find(m, "0");
    cr_assert(mj_is_parametrized(lin, "bias"));
    cr_assert(mj_is_parametrized(lin, "weight"));

    float want[6];
    naive(WMASK, BMASK, want);
    mj_tensor *x = mat(2, 4, X), *wt = mat(2, 3, want);
/* call, which sets y_, gives exactly want */
#define GIVES(call, want, what)                                                                                        \
    do {                                                                                                               \
        mj_tensor *y_ = NULL;                                                                                          \
        OK(call);                                                                                                      \
        cr_assert(mj_tensor_equal(y_, want), what);                                                                    \
        mj_tensor_release(y_);                                                                                         \
    } while (0)
    GIVES(mj_module_forward(m, x, &y_), wt, "eager");
    mj_graph *g;
    mj_tensor *ex;
    OK(mj_tensor_ones(&ex, 2, (int64_t[]){3, 4}));
    OK(mj_trace_module(m, ex, &g));
    mj_tensor_release(ex);
    GIVES(mj_graph_run(g, x, &y_), wt, "traced");
    mj_jit *jit;
    OK(mj_jit_new(&jit));
    mj_compile_options o;
    mj_compile_options_init(&o);
    o.use_cache = false;
    o.threads = 1;
    mj_compiled *live = mjt_compile_with(jit, g, &o);
    o.frozen = true;
    mj_compiled *frozen = mjt_compile_with(jit, g, &o);
    GIVES(mj_compiled_run(live, x, &y_), wt, "compiled live");
    GIVES(mj_compiled_run(frozen, x, &y_), wt, "compiled frozen");

    /* Live mode follows a new bias mask; frozen keeps the old numbers. */
    mj_parametrization *bp = mj_module_parametrization(lin, "bias", 0);
    cr_assert_not_null(bp);
    float *bm = mj_tensor_data_mut(mj_parametrization_buffer(bp, "mask"));
    const float BMASK2[3] = {0.0f, 1.0f, 1.0f};
    memcpy(bm, BMASK2, sizeof BMASK2);
    float want2[6];
    naive(WMASK, BMASK2, want2);
    mj_tensor *wt2 = mat(2, 3, want2);
    GIVES(mj_module_forward(m, x, &y_), wt2, "eager after the mask change");
    GIVES(mj_compiled_run(live, x, &y_), wt2, "live mode missed the new bias mask");
    GIVES(mj_compiled_run(frozen, x, &y_), wt, "frozen mode changed");
#undef GIVES

    mj_compiled_free(live);
    mj_compiled_free(frozen);
    mj_jit_free(jit);
    MJT_RELEASE(x, wt, wt2);
    mjt_free_traced(g, m);
}

/* Mask keys that fit no Linear parameter are refused by name, and change nothing. */
Test(files, unusable_mask_keys_are_refused_by_name) {
    static const char *const bias_mask = "0.parametrizations.bias.0.mask";
    /* each: the model, whether a good weight mask comes too, the bad key,
     * its mask's length, the error */
    static const struct {
        const char *spec;
        bool weight_mask;
        const char *key;
        int64_t n;
        mj_status status;
        const char *needle;
    } cases[] = {
        {"mlp:4,3,2", true, "0.parametrizations.weight.1.mask", 3, MJ_ERR_KEY, NULL}, /* index past the chain */
        {"mlp:4,3,2", true, "0.parametrizations.bias.1.mask", 3, MJ_ERR_KEY, NULL},
        {"mlp:4,3,2", true, "5.parametrizations.weight.0.mask", 3, MJ_ERR_KEY, NULL}, /* no such layer */
        {"mlp:4,3,2", true, "1.parametrizations.bias.0.mask", 3, MJ_ERR_KEY, NULL}, /* the activation has no bias */
        {"mlp:4,3,2", true, "0.parametrizations.scale.0.mask", 3, MJ_ERR_KEY, NULL}, /* no such parameter */
        {"mlp:4,3,2", true, "parametrizations.weight.0.mask", 3, MJ_ERR_KEY, NULL},  /* the root is no Linear */
        {"mlp:4,3,2", true, "0.parametrizations.weight.x.mask", 3, MJ_ERR_KEY, NULL},
        /* a bias mask of the wrong shape: a shape error naming it */
        {"mlp:4,3", true, bias_mask, 4, MJ_ERR_SHAPE, "'0.parametrizations.bias.0.mask' has shape [4]"},
        /* a bias mask on a model without biases */
        {"mlp:4,3:bias=0", false, bias_mask, 3, MJ_ERR_KEY, NULL},
    };
    const float ones[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mj_module *m;
        mj_rng r = mjt_rng(0);
        OK(mj_model_from_spec(cases[i].spec, &r, &m));
        mj_tensor_dict *masks;
        OK(mj_tensor_dict_new(&masks));
        if (cases[i].weight_mask) put(masks, "0.parametrizations.weight.0.mask", mat(3, 4, ones));
        put(masks, cases[i].key, vec(cases[i].n, ones));
        FAILS(mj_model_apply_masks(m, masks, 1.0, NULL), cases[i].status,
              cases[i].needle ? cases[i].needle : cases[i].key);
        cr_assert(!mj_is_parametrized(mj_module_find(m, "0"), NULL), "%s: a mask was registered", cases[i].key);
        mj_tensor_dict_free(masks);
        mj_module_free(m);
    }
}

/* One tensor under two keys: an error naming both. */
Test(files, two_keys_for_one_tensor_are_refused, .timeout = 60) {
    char *wf = at("w.safetensors");
    struct {
        const char *a, *b;
        bool bias_mask;
    } cases[] = {
        {"0.weight", "0.parametrizations.weight.original", false},
        {"0.bias", "0.parametrizations.bias.original", false},
        {"0.bias", "0.parametrizations.bias.original", true},
    };
    for (int c = 0; c < 3; c++) {
        mj_tensor_dict *d;
        OK(mj_tensor_dict_new(&d));
        put(d, "0.weight", mat(3, 4, W));
        put(d, "0.bias", vec(3, B));
        if (strcmp(cases[c].b, "0.parametrizations.weight.original") == 0)
            put(d, cases[c].b, mat(3, 4, W));
        else
            put(d, cases[c].b, vec(3, B));
        if (cases[c].bias_mask) put(d, "0.parametrizations.bias.0.mask", vec(3, BMASK));
        OK(mj_safetensors_save(wf, d));
        mj_tensor_dict_free(d);
        char *out;
        int rc = cli(&out, "run mlp:4,3 --weights %s", wf);
        cr_assert_eq(rc, 1, "case %d -> %d: %s", c, rc, out);
        cr_assert(strstr(out, cases[c].a) && strstr(out, cases[c].b), "case %d: %s", c, out);
        free(out);
    }
}

/* ---- state dicts of parametrized buffers ------------------------------------------ */

static mj_status fwd_identity(mj_module *self, const mj_tensor *x, mj_tensor **y) {
    (void)self;
    *y = mj_tensor_retain((mj_tensor *)x);
    return MJ_OK;
}

static mj_module *module_with_buffers(void) {
    mj_module *m;
    OK(mj_module_new(&m, "Buffers", fwd_identity, NULL, NULL));
    mj_tensor *a = vec(3, B), *b = vec(3, BMASK);
    OK(mj_module_add_buffer(m, "kept", a, true));
    OK(mj_module_add_buffer(m, "scratch", b, false));
    MJT_RELEASE(a, b);
    return m;
}

static void mask_buffer(mj_module *m, const char *name) {
    mj_tensor *mask = vec(3, BMASK);
    mj_parametrization *p;
    OK(mj_fake_sparsity_new(&p, mask));
    mj_tensor_release(mask);
    OK(mj_register_parametrization(m, name, p));
}

static void assert_keys(mj_tensor_dict *d, const char *const *keys, int n, const char *what) {
    char got[1024] = "";
    for (int i = 0; i < mj_tensor_dict_size(d); i++) {
        strcat(got, mj_tensor_dict_key(d, i));
        strcat(got, " ");
    }
    cr_assert_eq(mj_tensor_dict_size(d), n, "%s: %s", what, got);
    for (int i = 0; i < n; i++)
        cr_assert_str_eq(mj_tensor_dict_key(d, i), keys[i], "%s: %s", what, got);
}

/* PyTorch registers `original` with register_buffer (persistent), so a
 * parametrized buffer's original is in the state dict whether the buffer
 * was persistent or not; the FakeSparsity masks only with include_masks. */
Test(files, state_dict_of_parametrized_buffers) {
    mj_module *m = module_with_buffers();
    mj_tensor *kept = NULL, *scratch = NULL;
    OK(mj_module_get(m, "kept", &kept));
    OK(mj_module_get(m, "scratch", &scratch));
    mask_buffer(m, "kept");
    mask_buffer(m, "scratch");
    mj_tensor_dict *sd;
    OK(mj_module_state_dict(m, false, &sd));
    const char *want[] = {"parametrizations.kept.original", "parametrizations.scratch.original"};
    assert_keys(sd, want, 2, "state_dict");
    cr_assert_eq(mj_tensor_dict_get(sd, "parametrizations.kept.original"), kept);
    cr_assert_eq(mj_tensor_dict_get(sd, "parametrizations.scratch.original"), scratch);
    mj_tensor_dict_free(sd);
    OK(mj_module_state_dict(m, true, &sd));
    const char *with_masks[] = {"parametrizations.kept.original", "parametrizations.kept.0.mask",
                                "parametrizations.scratch.original",
                                "parametrizations.scratch.0.mask"};
    assert_keys(sd, with_masks, 4, "state_dict with masks");
    mj_tensor_dict_free(sd);
    OK(mj_module_named_buffers(m, &sd));
    const char *buffers[] = {"parametrizations.kept.original", "parametrizations.kept.0.mask",
                             "parametrizations.scratch.original",
                             "parametrizations.scratch.0.mask"};
    assert_keys(sd, buffers, 4, "named_buffers");
    mj_tensor_dict_free(sd);

    /* load_state_dict expects both originals and fills them. */
    mj_tensor_dict *in;
    OK(mj_tensor_dict_new(&in));
    const float v[3] = {7, 8, 9};
    put(in, "parametrizations.kept.original", vec(3, v));
    FAILS(mj_module_load_state_dict(m, in, true, NULL), MJ_ERR_KEY,
          "parametrizations.scratch.original");
    put(in, "parametrizations.scratch.original", vec(3, v));
    OK(mj_module_load_state_dict(m, in, false, NULL));
    mj_tensor *w = vec(3, v);
    cr_assert(mj_tensor_equal(kept, w));
    cr_assert(mj_tensor_equal(scratch, w));
    mj_tensor_release(w);
    mj_tensor_dict_free(in);

    /* remove_parametrizations re-registers with register_buffer: persistent. */
    OK(mj_remove_parametrizations(m, "scratch", false));
    OK(mj_remove_parametrizations(m, "kept", true));
    OK(mj_module_state_dict(m, false, &sd));
    const char *after[] = {"scratch", "kept"};
    assert_keys(sd, after, 2, "state_dict after remove");
    mj_tensor_dict_free(sd);
    MJT_RELEASE(kept, scratch);
    mj_module_free(m);
}
