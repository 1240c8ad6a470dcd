/* Ahead-of-time compilation: the JIT's compile path (the same graph passes,
 * plan, prologue and lowering as jit/compile.c, so frozen code is the
 * JIT's), written to an object file for a chosen target instead of linked
 * into this process, plus a public wrapper emitted into the same module:
 *
 *   int NAME_run(int64_t batch, const float *const inputs[], float *const outputs[])
 *
 * checks the CPU (cpuid/xgetbv as inline asm, once), its arguments and the
 * batch, allocates the scratch (on its stack when small, else aligned_alloc)
 * and calls the body on one thread. The wrapper and the check are compiled
 * for the baseline x86-64 whatever the target, so that a CPU without the
 * target's features reaches the check instead of a SIGILL.
 *
 * Live (not frozen): only params and consts are leaves; the body computes
 * the rest of the prologue (mask products) on every call, the wrapper packs
 * param weights into the scratch, and NAME_bind / NAME_run_with supply the
 * params. Only libc and libm symbols stay undefined. See docs/aot.md. */
#include "aot.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "src/core/internal.h"
#include "aot_internal.h"

extern char **environ;

void mj_aot_options_init(mj_aot_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->name = "model";
    o->numeric = MJ_NUMERIC_EXACT;
    o->frozen = true;
}

/* ---- files ------------------------------------------------------------------ */

/* Writes data to a new temporary file dir/.name.XXXXXX (path in tmp). */
static mj_status write_temp(const char *dir, const char *name, const void *data, size_t n, char tmp[4096]) {
    if ((size_t)snprintf(tmp, 4096, "%s/.%s.XXXXXX", dir, name) >= 4096)
        return mj_fail(MJ_ERR_INVALID, "aot: the output path %s/%s is too long", dir, name);
    int fd = mkstemp(tmp);
    if (fd < 0) return mj_fail(MJ_ERR_IO, "aot: cannot create a file in %s: %s", dir, strerror(errno));
    const char *p = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return mj_fail(MJ_ERR_IO, "aot: writing %s/%s failed: %s", dir, name, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    /* mkstemp makes 0600; an output is an ordinary build product */
    mode_t um = umask(0);
    umask(um);
    if (fchmod(fd, 0666 & ~um) != 0 || close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return mj_fail(MJ_ERR_IO, "aot: writing %s/%s failed: %s", dir, name, strerror(e));
    }
    return MJ_OK;
}

/* Writes dir/NAME.o and dir/NAME.h: both to temporary files first, then
 * renamed, so a failure leaves no partial file and (short of a failing
 * rename) no new object next to an old header. */
static mj_status write_outputs(const char *dir, const char *name, const void *obj, size_t obj_n, const char *hdr,
                               size_t hdr_n) {
    char fo[96], fh[96], to[4096], th[4096], po[4200], ph[4200];
    snprintf(fo, sizeof fo, "%s.o", name);
    snprintf(fh, sizeof fh, "%s.h", name);
    MJ_TRY(write_temp(dir, fo, obj, obj_n, to));
    mj_status s = write_temp(dir, fh, hdr, hdr_n, th);
    if (s != MJ_OK) {
        unlink(to);
        return s;
    }
    snprintf(po, sizeof po, "%s/%s", dir, fo);
    snprintf(ph, sizeof ph, "%s/%s", dir, fh);
    if (rename(to, po) != 0) {
        s = mj_fail(MJ_ERR_IO, "aot: cannot write %s: %s", po, strerror(errno));
        unlink(to);
        unlink(th);
        return s;
    }
    if (rename(th, ph) != 0) {
        s = mj_fail(MJ_ERR_IO, "aot: cannot write %s: %s", ph, strerror(errno));
        unlink(th);
        return s;
    }
    return MJ_OK;
}

/* cc -shared -o dir/.NAME.so.PID.tmp dir/NAME.o -lm, then rename: no shell. */
static mj_status link_shared(const char *dir, const char *name) {
    char obj[4096], tmp[4096], so[4096];
    if ((size_t)snprintf(obj, sizeof obj, "%s/%s.o", dir, name) >= sizeof obj ||
        (size_t)snprintf(tmp, sizeof tmp, "%s/.%s.so.%ld.tmp", dir, name, (long)getpid()) >= sizeof tmp ||
        (size_t)snprintf(so, sizeof so, "%s/%s.so", dir, name) >= sizeof so)
        return mj_fail(MJ_ERR_INVALID, "aot: the output path in %s is too long", dir);
    char *argv[] = {"cc", "-shared", "-o", tmp, obj, "-lm", NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "cc", NULL, NULL, argv, environ);
    if (rc != 0)
        return mj_fail(MJ_ERR_UNSUPPORTED, "aot: --shared needs a C compiler `cc` on PATH to link %s.so: %s", name,
                       strerror(rc));
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return mj_fail(MJ_ERR_IO, "aot: waiting for cc failed: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        unlink(tmp);
        return mj_fail(MJ_ERR_IO, "aot: `cc -shared -o %s %s -lm` failed (status %d)", so, obj,
                       WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    if (rename(tmp, so) != 0) {
        int e = errno;
        unlink(tmp);
        return mj_fail(MJ_ERR_IO, "aot: cannot write %s: %s", so, strerror(e));
    }
    return MJ_OK;
}

static bool is_identifier(const char *s) {
    if (!s || !*s || strlen(s) > 64) return false;
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_')) return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    return true;
}

static mj_status ensure_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return mj_fail(MJ_ERR_IO, "aot: %s exists and is not a directory", dir);
        return MJ_OK;
    }
    if (mkdir(dir, 0777) != 0) return mj_fail(MJ_ERR_IO, "aot: cannot create the directory %s: %s", dir, strerror(errno));
    return MJ_OK;
}

static pthread_once_t llvm_once = PTHREAD_ONCE_INIT;
static bool llvm_ok;
static void llvm_init(void) {
    /* the asm parser: the CPU check is inline asm */
    llvm_ok = LLVMInitializeNativeTarget() == 0 && LLVMInitializeNativeAsmPrinter() == 0 &&
              LLVMInitializeNativeAsmParser() == 0;
}

/* o's own checks, and the target it names (t, to free) */
static mj_status options_target(const mj_aot_options *o, target *t) {
    if (!is_identifier(o->name))
        return mj_fail(MJ_ERR_INVALID, "aot: name \"%.80s\" is not a C identifier of at most 64 characters", o->name);
    if ((unsigned)o->numeric > MJ_NUMERIC_FAST)
        return mj_fail(MJ_ERR_INVALID, "aot: unknown numeric mode %d", (int)o->numeric);
    pthread_once(&llvm_once, llvm_init);
    if (!llvm_ok) return mj_fail(MJ_ERR_BACKEND, "LLVM has no native target for this host");
    return mj_aot_target_init(o, t);
}

static mj_aot_options options_or_defaults(const mj_aot_options *opts) {
    mj_aot_options o;
    if (opts) o = *opts;
    else mj_aot_options_init(&o);
    if (!o.name) o.name = "model";
    return o;
}

mj_status mj_aot_options_check(const mj_aot_options *opts) {
    mj_aot_options o = options_or_defaults(opts);
    target t;
    MJ_TRY(options_target(&o, &t));
    mj_aot_target_free(&t);
    return MJ_OK;
}

mj_status mj_aot_compile(const mj_graph *g, const mj_aot_options *opts, const char *dir) {
    if (!g || !dir) return mj_fail(MJ_ERR_INVALID, "mj_aot_compile: %s is NULL", !g ? "the graph" : "dir");
    mj_aot_options o = options_or_defaults(opts);
    if (!*dir) return mj_fail(MJ_ERR_INVALID, "aot: the output directory is empty");
    target t;
    MJ_TRY(options_target(&o, &t));
    aot a;
    LLVMMemoryBufferRef obj = NULL;
    char *need = NULL, *hdr = NULL;
    size_t hdr_len = 0;
    mj_status s = mj_aot_prepare(g, &o, &t, &a);
    if (s != MJ_OK) goto out;
    if (!(need = mj_aot_need_list(&t))) {
        s = MJ_ERR_NOMEM;
        goto out;
    }
    if ((s = mj_aot_build_object(&a, &t, need, &obj)) != MJ_OK) goto out;
    if (!(hdr = mj_aot_header_text(&a, &t, need, &hdr_len))) {
        s = mj_fail(MJ_ERR_NOMEM, "aot: out of memory for the header");
        goto out;
    }
    if ((s = ensure_dir(dir)) != MJ_OK) goto out;
    if ((s = write_outputs(dir, o.name, LLVMGetBufferStart(obj), LLVMGetBufferSize(obj), hdr, hdr_len)) != MJ_OK)
        goto out;
    if (o.shared) s = link_shared(dir, o.name);
out:
    if (obj) LLVMDisposeMemoryBuffer(obj);
    free(hdr);
    free(need);
    mj_aot_free(&a);
    mj_aot_target_free(&t);
    return s;
}
