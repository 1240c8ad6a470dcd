/* Writing a file the user named (mj_safetensors_save, so the CLI's --out and
 * -o). What the name is decides how:
 *   - a regular file, or a name that does not exist yet: a temporary file in
 *     the same directory, fsync, rename over it. A replaced file keeps its
 *     permission bits (and owner and group when the process may set them);
 *     a new file gets 0666 & ~umask from open(2), like any created file.
 *   - a symlink: followed (every hop, also to a target that does not exist
 *     yet); the target is replaced as above and the link stays a link.
 *   - a character device or a FIFO (/dev/null, /dev/stdout on a pipe):
 *     written through, never replaced. A FIFO with no reader is an error at
 *     once (O_NONBLOCK open), not a hang; SIGPIPE is held off while writing
 *     so a reader that goes away is an error, not the death of the process.
 *   - a directory, a socket or a block device: refused. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "src/core/internal.h"

#define OUT_MAX_LINK_HOPS 40 /* as the kernel's own limit (ELOOP) */

/* Directory part of path ("." when it has no '/'). */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return mj_strdup(".");
    if (slash == path) return mj_strdup("/");
    size_t n = (size_t)(slash - path);
    char *d = mj_alloc(n + 1);
    if (d) memcpy(d, path, n);
    return d;
}

/* Follows path while it is a symlink; *out is the last name (which may not
 * exist). Relative link contents are relative to the link's directory. */
static mj_status follow_links(const char *path, char **out) {
    char *cur = mj_strdup(path);
    if (!cur) return MJ_ERR_NOMEM;
    char target[PATH_MAX];
    for (int hops = 0;; hops++) {
        struct stat ls;
        if (lstat(cur, &ls) != 0 || !S_ISLNK(ls.st_mode)) break;
        if (hops == OUT_MAX_LINK_HOPS) {
            free(cur);
            return mj_fail(MJ_ERR_IO, "'%s': more than %d levels of symbolic links", path,
                           OUT_MAX_LINK_HOPS);
        }
        ssize_t n = readlink(cur, target, sizeof target);
        if (n < 0 || (size_t)n >= sizeof target) {
            mj_status s = mj_fail(MJ_ERR_IO, "reading the symbolic link '%s': %s", cur,
                                  n < 0 ? strerror(errno) : "target too long");
            free(cur);
            return s;
        }
        target[n] = '\0';
        char *next;
        if (target[0] == '/') {
            next = mj_strdup(target);
        } else {
            char *dir = dir_of(cur);
            next = dir ? mj_alloc(strlen(dir) + (size_t)n + 2) : NULL;
            if (next) sprintf(next, "%s/%s", dir, target);
            free(dir);
        }
        free(cur);
        if (!next) return MJ_ERR_NOMEM;
        cur = next;
    }
    *out = cur;
    return MJ_OK;
}

/* Creates "<final>.tmp.XXXXXX" with O_EXCL and the given mode (umask applies). */
static mj_status create_temp(mj_outfile *o, mode_t mode) {
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    size_t n = strlen(o->final);
    o->tmp = mj_alloc(n + sizeof ".tmp.XXXXXX");
    if (!o->tmp) return MJ_ERR_NOMEM;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 16) ^
                 (uint64_t)(uintptr_t)o;
    for (int attempt = 0; attempt < 100; attempt++) {
        memcpy(o->tmp, o->final, n);
        memcpy(o->tmp + n, ".tmp.", 5);
        for (int i = 0; i < 6; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64: names, not secrets */
            o->tmp[n + 5 + i] = alphabet[x % (sizeof alphabet - 1)];
        }
        o->tmp[n + 11] = '\0';
        o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (o->fd >= 0) return MJ_OK;
        if (errno != EEXIST) break;
    }
    mj_status s = mj_fail(MJ_ERR_IO, "cannot create a temporary file '%s': %s", o->tmp,
                          strerror(errno));
    free(o->tmp);
    o->tmp = NULL;
    return s;
}

/* Character device or FIFO: open it for writing as it is. */
static mj_status open_through(mj_outfile *o, const struct stat *st) {
    bool fifo = S_ISFIFO(st->st_mode);
    o->fd = open(o->path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (o->fd < 0) {
        if (fifo && errno == ENXIO)
            return mj_fail(MJ_ERR_IO, "'%s' is a FIFO with no reader (start the reader first)",
                           o->path);
        return mj_fail(MJ_ERR_IO, "opening '%s': %s", o->path, strerror(errno));
    }
    /* Now blocking again: a reader that is slower than us is no error. */
    struct stat now;
    int fl = fcntl(o->fd, F_GETFL);
    if (fstat(o->fd, &now) != 0 || !(S_ISFIFO(now.st_mode) || S_ISCHR(now.st_mode)) || fl < 0 ||
        fcntl(o->fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        close(o->fd);
        o->fd = -1;
        return mj_fail(MJ_ERR_IO, "'%s' changed while it was being opened", o->path);
    }
    o->through = true;
    return MJ_OK;
}

mj_status mj_outfile_open(mj_outfile *o, const char *path) {
    memset(o, 0, sizeof *o);
    o->fd = -1;
    o->path = path;
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno != ENOENT) return mj_fail(MJ_ERR_IO, "'%s': %s", path, strerror(errno));
        /* A new file, maybe behind a symlink whose target does not exist yet. */
        MJ_TRY(follow_links(path, &o->final));
        o->dir = dir_of(o->final);
        if (!o->dir) {
            mj_outfile_abort(o);
            return MJ_ERR_NOMEM;
        }
        mj_status s = create_temp(o, 0666);
        if (s != MJ_OK) mj_outfile_abort(o);
        return s;
    }
    if (S_ISDIR(st.st_mode)) return mj_fail(MJ_ERR_IO, "'%s' is a directory", path);
    if (S_ISSOCK(st.st_mode))
        return mj_fail(MJ_ERR_IO, "'%s' is a socket (write to a file, a FIFO or a character device)",
                       path);
    if (S_ISBLK(st.st_mode))
        return mj_fail(MJ_ERR_IO, "'%s' is a block device; refusing to write over it", path);
    if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)) return open_through(o, &st);
    if (!S_ISREG(st.st_mode))
        return mj_fail(MJ_ERR_IO, "'%s' is not a regular file, FIFO or character device", path);

    /* An existing file: replace the file the name leads to, and only that. */
    MJ_TRY(follow_links(path, &o->final));
    struct stat fs;
    mj_status s = MJ_OK;
    if (lstat(o->final, &fs) != 0 || !S_ISREG(fs.st_mode) || fs.st_dev != st.st_dev ||
        fs.st_ino != st.st_ino)
        s = mj_fail(MJ_ERR_IO, "'%s' leads to '%s', which is not the file it opens; not replacing it",
                    path, o->final);
    if (s == MJ_OK && !(o->dir = dir_of(o->final))) s = MJ_ERR_NOMEM;
    if (s == MJ_OK) s = create_temp(o, 0600);
    if (s == MJ_OK) {
        /* Keep owner and group where allowed (root, or a group we are in);
         * failing that the file is ours, which is what a new file would be. */
        bool theirs = fs.st_uid != geteuid() || fs.st_gid != getegid();
        if (theirs && fchown(o->fd, fs.st_uid, fs.st_gid) != 0 &&
            fchown(o->fd, (uid_t)-1, fs.st_gid) != 0)
            errno = 0; /* neither allowed: the file stays ours, as a new one would be */
        /* Permission bits only: set-id bits do not belong on a data file. */
        if (fchmod(o->fd, fs.st_mode & 0777) != 0)
            s = mj_fail(MJ_ERR_IO, "chmod '%s': %s", o->tmp, strerror(errno));
    }
    if (s != MJ_OK) mj_outfile_abort(o);
    return s;
}

/* write(2) with SIGPIPE held off: a closed pipe becomes EPIPE. Linux sends
 * SIGPIPE also for a partial write, so any SIGPIPE this write raised is
 * taken off the pending set before the old mask comes back. */
static ssize_t write_no_sigpipe(int fd, const void *buf, size_t n) {
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    bool was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE);
    ssize_t w = write(fd, buf, n);
    int err = errno;
    if (!was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return w;
}

mj_status mj_outfile_write(mj_outfile *o, const void *buf, size_t n) {
    const char *p = buf;
    const char *name = o->tmp ? o->tmp : o->path;
    while (n > 0) {
        size_t step = n > (size_t)1 << 30 ? (size_t)1 << 30 : n;
        ssize_t w = o->through ? write_no_sigpipe(o->fd, p, step) : write(o->fd, p, step);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EPIPE) return mj_fail(MJ_ERR_IO, "writing '%s': the reader went away", name);
            return mj_fail(MJ_ERR_IO, "writing '%s': %s", name, strerror(errno));
        }
        if (w == 0) return mj_fail(MJ_ERR_IO, "writing '%s': no progress", name);
        p += w;
        n -= (size_t)w;
    }
    return MJ_OK;
}

mj_status mj_outfile_commit(mj_outfile *o) {
    mj_status s = MJ_OK;
    if (o->through) {
        int rc = close(o->fd);
        o->fd = -1;
        if (rc != 0 && errno != EINTR) s = mj_fail(MJ_ERR_IO, "closing '%s': %s", o->path, strerror(errno));
        mj_outfile_abort(o);
        return s;
    }
    if (fsync(o->fd) != 0) {
        s = mj_fail(MJ_ERR_IO, "fsync '%s': %s", o->tmp, strerror(errno));
        mj_outfile_abort(o);
        return s;
    }
    int rc = close(o->fd);
    o->fd = -1;
    if (rc != 0) {
        s = mj_fail(MJ_ERR_IO, "closing '%s': %s", o->tmp, strerror(errno));
    } else if (rename(o->tmp, o->final) != 0) {
        s = mj_fail(MJ_ERR_IO, "renaming '%s' to '%s': %s", o->tmp, o->final, strerror(errno));
    } else {
        free(o->tmp);
        o->tmp = NULL; /* renamed: nothing to remove any more */
        /* Make the rename durable; file systems that cannot fsync a
         * directory (EINVAL) give no stronger guarantee to ask for. */
        int dfd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0) {
            s = mj_fail(MJ_ERR_IO, "opening directory '%s' to fsync it: %s", o->dir, strerror(errno));
        } else {
            if (fsync(dfd) != 0 && errno != EINVAL)
                s = mj_fail(MJ_ERR_IO, "fsync of directory '%s': %s", o->dir, strerror(errno));
            close(dfd);
        }
    }
    mj_outfile_abort(o);
    return s;
}

void mj_outfile_abort(mj_outfile *o) {
    if (o->fd >= 0) close(o->fd);
    if (o->tmp) unlink(o->tmp);
    free(o->tmp);
    free(o->final);
    free(o->dir);
    o->fd = -1;
    o->tmp = o->final = o->dir = NULL;
    o->through = false;
}
