/* writer.c: the staging ring and the background writer thread of ckpt.h.
 *
 * The ring is a FIFO of bytes: dc_ckpt_submit (the producer, in the caller's thread) copies the
 * segments in the order the files write them; the writer thread consumes them in that order,
 * CRCs and writes each piece, and frees its space. `head` and `tail` count bytes produced and
 * consumed since the job began; both only grow, under the mutex, and `head - tail <= cap`.
 *
 * A writer error (ENOSPC, EACCES, ...) sets `failed`; the producer stops copying at once and the
 * job finishes with the error. Temporary files of a failed job are removed; nothing committed
 * earlier is touched. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ckpt.h"

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

#define CHUNK ((size_t)8 << 20) /* the writer's largest write(2): CRC and write per 8 MiB */

typedef struct {
    char *name;
    unsigned char *head;
    size_t head_len;
    int nsegs;
    int *segs;
} file_t;

typedef struct {
    char *dir;
    int nseg;
    size_t *seg_bytes;
    char **seg_key;
    int *order; /* (nseg,) segments in ring order */
    int nfiles;
    file_t *files;
    char *fragment_name, *manifest_name, *prefix, *suffix;
    int nwait;
    char **wait_for;
    double wait_timeout_s;
    char *commit_to, *link_path, *link_target;
    int fsync;
} job_t;

struct dc_ckpt {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* every change of state, head, tail, failed, producing */
    unsigned char *ring;
    size_t cap;
    uint64_t head, tail;
    int state, stop, failed, producing, has_job, niceness;
    job_t job;
    uint32_t *crcs;
    dc_status status;
    char msg[1024];
    double seconds;
    uint64_t bytes;
};

/* ---- small helpers ------------------------------------------------------------------------- */
static char *dupstr(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* a + b + c, malloc'd (NULL when out of memory) */
static char *cat3(const char *a, const char *b, const char *c)
{
    size_t x = strlen(a), y = strlen(b), z = strlen(c);
    char *p = malloc(x + y + z + 1);
    if (!p) return NULL;
    memcpy(p, a, x);
    memcpy(p + x, b, y);
    memcpy(p + x + y, c, z + 1);
    return p;
}

static char *joinpath(const char *dir, const char *name)
{
    return cat3(dir, "/", name);
}
static char *catstr(const char *a, const char *b)
{
    return cat3(a, b, "");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void job_clear(job_t *j)
{
    free(j->dir);
    free(j->seg_bytes);
    if (j->seg_key)
        for (int i = 0; i < j->nseg; i++) free(j->seg_key[i]);
    free(j->seg_key);
    free(j->order);
    if (j->files)
        for (int f = 0; f < j->nfiles; f++) {
            free(j->files[f].name);
            free(j->files[f].head);
            free(j->files[f].segs);
        }
    free(j->files);
    free(j->fragment_name);
    free(j->manifest_name);
    free(j->prefix);
    free(j->suffix);
    if (j->wait_for)
        for (int i = 0; i < j->nwait; i++) free(j->wait_for[i]);
    free(j->wait_for);
    free(j->commit_to);
    free(j->link_path);
    free(j->link_target);
    memset(j, 0, sizeof *j);
}

/* The writer's error: kept in the object, raised in the caller's thread by dc_ckpt_result. */
__attribute__((format(printf, 3, 4))) static int fail(dc_ckpt *c, dc_status s, const char *fmt, ...)
{
    pthread_mutex_lock(&c->mu);
    if (!c->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->msg, sizeof c->msg, fmt, ap);
        va_end(ap);
        c->status = s;
        c->failed = 1;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return -1;
}

static int fail_errno(dc_ckpt *c, const char *what, const char *path)
{
    int e = errno;
    return fail(c, e == ENOMEM ? DC_ERR_NOMEM : DC_ERR_VALUE, "checkpoint write failed: %s '%s': %s", what, path,
                strerror(e));
}

static int write_all(int fd, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fsync_path(dc_ckpt *c, const char *path)
{
    if (!c->job.fsync) return 0;
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return fail_errno(c, "open directory", path);
    int r = fsync(fd);
    if (r < 0 && errno != EINVAL && errno != EROFS) { /* some file systems cannot fsync a directory */
        int e = errno;
        close(fd);
        errno = e;
        return fail_errno(c, "fsync directory", path);
    }
    close(fd);
    return 0;
}

static char *parent_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return dupstr(".");
    if (slash == path) return dupstr("/");
    size_t n = (size_t)(slash - path);
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, path, n);
    p[n] = 0;
    return p;
}

static int mkdir_p(dc_ckpt *c, const char *dir)
{
    char *p = dupstr(dir);
    if (!p) return fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char was = *s;
            *s = 0;
            if (mkdir(p, 0755) < 0 && errno != EEXIST) {
                fail_errno(c, "mkdir", p);
                free(p);
                return -1;
            }
            *s = was;
            if (!was) break;
        }
    }
    free(p);
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return fail(c, DC_ERR_VALUE, "checkpoint write failed: '%s' is not a directory", dir);
    return 0;
}

/* ---- the ring, consumer side ----------------------------------------------------------------- */
/* Wait for at least one staged byte; returns a pointer to the contiguous run and its length
 * (<= want), or NULL when the job failed. */
static unsigned char *ring_take(dc_ckpt *c, size_t want, size_t *got)
{
    pthread_mutex_lock(&c->mu);
    while (c->head == c->tail && !c->failed) pthread_cond_wait(&c->cv, &c->mu);
    if (c->failed) {
        pthread_mutex_unlock(&c->mu);
        return NULL;
    }
    size_t avail = (size_t)(c->head - c->tail);
    size_t off = (size_t)(c->tail % c->cap);
    pthread_mutex_unlock(&c->mu);
    size_t n = avail < want ? avail : want;
    if (n > c->cap - off) n = c->cap - off;
    *got = n;
    return c->ring + off;
}

static void ring_free(dc_ckpt *c, size_t n)
{
    pthread_mutex_lock(&c->mu);
    c->tail += n;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* ---- the job's steps ------------------------------------------------------------------------- */
/* Write path.tmp with `head` and (when segs) the segments from the ring, fsync, rename to path. */
static int write_file(dc_ckpt *c, const char *path, const void *head, size_t head_len, const int *segs, int nsegs)
{
    job_t *j = &c->job;
    char *tmp = catstr(path, ".tmp");
    if (!tmp) return fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fail_errno(c, "open", tmp);
        free(tmp);
        return -1;
    }
    const char *what = "write";
    if (head_len && write_all(fd, head, head_len) < 0) goto err;
    c->bytes += head_len;
    for (int k = 0; k < nsegs; k++) {
        int s = segs[k];
        size_t left = j->seg_bytes[s];
        uint32_t crc = 0;
        while (left) {
            size_t n;
            unsigned char *p = ring_take(c, left < CHUNK ? left : CHUNK, &n);
            if (!p) goto quiet; /* the producer or an earlier step failed: already reported */
            crc = dc_crc32c(crc, p, n);
            if (write_all(fd, p, n) < 0) goto err;
            ring_free(c, n);
            left -= n;
            c->bytes += n;
        }
        c->crcs[s] = crc;
    }
    what = "fsync";
    if (j->fsync && fsync(fd) < 0) goto err;
    what = "close";
    if (close(fd) < 0) {
        fd = -1;
        goto err;
    }
    fd = -1;
    what = "rename";
    if (rename(tmp, path) < 0) goto err;
    free(tmp);
    return 0;
err:
    fail_errno(c, what, tmp);
quiet:
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    return -1;
}

static int write_fragment(dc_ckpt *c)
{
    job_t *j = &c->job;
    size_t n = 1;
    for (int s = 0; s < j->nseg; s++)
        if (j->seg_key[s]) n += strlen(j->seg_key[s]) + 12;
    char *text = malloc(n), *p = text;
    if (!text) return fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
    *p = 0;
    for (int s = 0; s < j->nseg; s++) {
        if (!j->seg_key[s]) continue;
        p += sprintf(p, "%s%s:\"%08x\"", p == text ? "" : ",", j->seg_key[s], (unsigned)c->crcs[s]);
    }
    char *path = joinpath(j->dir, j->fragment_name);
    int r = path ? write_file(c, path, text, (size_t)(p - text), NULL, 0) : fail(c, DC_ERR_NOMEM, "out of memory");
    free(path);
    free(text);
    return r;
}

static char *read_small(dc_ckpt *c, const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail_errno(c, "open", path);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        fail_errno(c, "stat", path);
        close(fd);
        return NULL;
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
        return NULL;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = EIO;
            fail_errno(c, "read", path);
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *len = n;
    return buf;
}

static int write_manifest(dc_ckpt *c)
{
    job_t *j = &c->job;
    char **paths = calloc((size_t)j->nwait + 1, sizeof *paths);
    if (!paths) return fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
    int r = -1;
    for (int i = 0; i < j->nwait; i++)
        if (!(paths[i] = joinpath(j->dir, j->wait_for[i]))) {
            fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
            goto out;
        }
    /* Other ranks' fragments: each appears (renamed into place) once that rank's files are durable. */
    double t0 = now_s();
    for (int i = 0; i < j->nwait; i++) {
        struct stat st;
        while (stat(paths[i], &st) < 0) {
            if (errno != ENOENT) {
                fail_errno(c, "stat", paths[i]);
                goto out;
            }
            if (j->wait_timeout_s >= 0 && now_s() - t0 > j->wait_timeout_s) {
                fail(c, DC_ERR_TIMEOUT,
                     "checkpoint commit timed out after %.0f s waiting for '%s' (a rank did not finish writing its "
                     "shard: did it die or run out of disk?)",
                     j->wait_timeout_s, paths[i]);
                goto out;
            }
            pthread_mutex_lock(&c->mu);
            int stop = c->stop;
            pthread_mutex_unlock(&c->mu);
            if (stop) {
                fail(c, DC_ERR_VALUE, "checkpoint commit abandoned: the writer was closed while waiting for '%s'",
                     paths[i]);
                goto out;
            }
            struct timespec ts = { 0, 2000000 };
            nanosleep(&ts, NULL);
        }
    }
    size_t total = strlen(j->prefix) + strlen(j->suffix) + 1;
    char **frag = calloc((size_t)j->nwait + 1, sizeof *frag);
    size_t *flen = calloc((size_t)j->nwait + 1, sizeof *flen);
    if (!frag || !flen) {
        free(frag);
        free(flen);
        fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
        goto out;
    }
    int ok = 1;
    for (int i = 0; i < j->nwait && ok; i++) {
        if (!(frag[i] = read_small(c, paths[i], &flen[i])))
            ok = 0;
        else
            total += flen[i] + 1;
    }
    char *text = ok ? malloc(total) : NULL;
    if (ok && !text) fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
    if (text) {
        char *p = text;
        size_t n = strlen(j->prefix);
        memcpy(p, j->prefix, n);
        p += n;
        int first = 1;
        for (int i = 0; i < j->nwait; i++) {
            if (!flen[i]) continue;
            if (!first) *p++ = ',';
            memcpy(p, frag[i], flen[i]);
            p += flen[i];
            first = 0;
        }
        n = strlen(j->suffix);
        memcpy(p, j->suffix, n);
        p += n;
        char *path = joinpath(j->dir, j->manifest_name);
        if (!path)
            fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
        else
            r = write_file(c, path, text, (size_t)(p - text), NULL, 0);
        free(path);
        free(text);
    }
    for (int i = 0; i < j->nwait; i++) free(frag[i]);
    free(frag);
    free(flen);
out:
    for (int i = 0; i < j->nwait; i++) free(paths[i]);
    free(paths);
    return r;
}

static int commit_dir(dc_ckpt *c)
{
    job_t *j = &c->job;
    if (rename(j->dir, j->commit_to) < 0) {
        if (errno != ENOTEMPTY && errno != EEXIST && errno != EISDIR && errno != ENOTDIR)
            return fail_errno(c, "rename", j->dir);
        /* the destination exists: swap the two atomically; the old one is left at dir */
        if (syscall(SYS_renameat2, AT_FDCWD, j->dir, AT_FDCWD, j->commit_to, RENAME_EXCHANGE) < 0) {
            if (errno != EINVAL && errno != ENOSYS) return fail_errno(c, "rename (exchange)", j->commit_to);
            /* no RENAME_EXCHANGE on this file system: move the old one aside, then the new one in
             * (a crash between the two leaves both complete, at dir.old and dir) */
            char *aside = catstr(j->dir, ".old");
            if (!aside) return fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
            if (rename(j->commit_to, aside) < 0 || rename(j->dir, j->commit_to) < 0) {
                fail_errno(c, "rename", j->commit_to);
                free(aside);
                return -1;
            }
            free(aside);
        }
    }
    char *parent = parent_of(j->commit_to);
    int r = parent ? fsync_path(c, parent) : fail(c, DC_ERR_NOMEM, "out of memory");
    free(parent);
    return r;
}

static int switch_link(dc_ckpt *c)
{
    job_t *j = &c->job;
    char *tmp = catstr(j->link_path, ".tmp");
    if (!tmp) return fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
    unlink(tmp);
    int r = 0;
    if (symlink(j->link_target, tmp) == 0) {
        if (rename(tmp, j->link_path) < 0) {
            /* link_path is a directory (a checkpoint saved under that name): exchange, the caller
             * deletes what ends up at tmp */
            if ((errno != EISDIR && errno != ENOTEMPTY && errno != EEXIST) ||
                syscall(SYS_renameat2, AT_FDCWD, tmp, AT_FDCWD, j->link_path, RENAME_EXCHANGE) < 0) {
                r = fail_errno(c, "rename", tmp);
                unlink(tmp);
            }
        }
    } else if (errno == EPERM || errno == ENOSYS || errno == EOPNOTSUPP) {
        /* no symlinks on this file system: a pointer file, written and renamed the same way */
        char *text = catstr("dutycycle checkpoint pointer\n", j->link_target);
        if (!text)
            r = fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
        else
            r = write_file(c, j->link_path, text, strlen(text), NULL, 0);
        free(text);
    } else {
        r = fail_errno(c, "symlink", tmp);
    }
    free(tmp);
    if (r == 0) {
        char *parent = parent_of(j->link_path);
        r = parent ? fsync_path(c, parent) : fail(c, DC_ERR_NOMEM, "out of memory");
        free(parent);
    }
    return r;
}

static void run_job(dc_ckpt *c)
{
    job_t *j = &c->job;
    double t0 = now_s();
    c->bytes = 0;
    if (mkdir_p(c, j->dir) < 0) goto done;
    for (int f = 0; f < j->nfiles; f++) {
        file_t *fl = &j->files[f];
        char *path = joinpath(j->dir, fl->name);
        if (!path) {
            fail(c, DC_ERR_NOMEM, "checkpoint: out of memory");
            goto done;
        }
        int r = write_file(c, path, fl->head, fl->head_len, fl->segs, fl->nsegs);
        free(path);
        if (r < 0) goto done;
    }
    if (j->nfiles && fsync_path(c, j->dir) < 0) goto done;
    if (j->fragment_name && write_fragment(c) < 0) goto done;
    if (j->manifest_name) {
        if (write_manifest(c) < 0) goto done;
        if (fsync_path(c, j->dir) < 0) goto done;
    }
    if (j->commit_to && commit_dir(c) < 0) goto done;
    if (j->link_path && switch_link(c) < 0) goto done;
done:
    c->seconds = now_s() - t0;
}

static void *writer_main(void *arg)
{
    dc_ckpt *c = arg;
    if (c->niceness > 0) { /* best effort: a thread may always lower its own priority */
        pid_t tid = (pid_t)syscall(SYS_gettid);
        int now = getpriority(PRIO_PROCESS, (id_t)tid);
        (void)setpriority(PRIO_PROCESS, (id_t)tid, now + c->niceness > 19 ? 19 : now + c->niceness);
    }
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->has_job && !c->stop) pthread_cond_wait(&c->cv, &c->mu);
        if (!c->has_job) break;
        pthread_mutex_unlock(&c->mu);
        run_job(c);
        pthread_mutex_lock(&c->mu);
        /* a failed job: wait until the producer has stopped touching the ring */
        while (c->producing) pthread_cond_wait(&c->cv, &c->mu);
        c->has_job = 0;
        c->state = DC_CKPT_DONE;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- public ---------------------------------------------------------------------------------- */
dc_status dc_ckpt_init(dc_ckpt **out, size_t capacity, int niceness)
{
    *out = NULL;
    if (capacity == 0) return dc_error(DC_ERR_VALUE, "checkpoint staging pool: capacity must be > 0 bytes");
    dc_ckpt *c = calloc(1, sizeof *c);
    if (!c) return dc_error(DC_ERR_NOMEM, "checkpoint: out of memory");
    c->ring = malloc(capacity);
    if (!c->ring) {
        free(c);
        return dc_error(DC_ERR_NOMEM, "checkpoint staging pool: cannot allocate %zu bytes", capacity);
    }
    c->cap = capacity;
    c->niceness = niceness < 0 ? 0 : niceness;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    int e = pthread_create(&c->thread, NULL, writer_main, c);
    if (e) {
        free(c->ring);
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        free(c);
        return dc_error(DC_ERR_NOMEM, "checkpoint: cannot start the writer thread: %s", strerror(e));
    }
    *out = c;
    return DC_OK;
}

size_t dc_ckpt_capacity(const dc_ckpt *c)
{
    return c->cap;
}

static void wait_not_running(dc_ckpt *c)
{
    pthread_mutex_lock(&c->mu);
    while (c->state == DC_CKPT_RUNNING) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

dc_status dc_ckpt_resize(dc_ckpt *c, size_t capacity)
{
    if (capacity == 0) return dc_error(DC_ERR_VALUE, "checkpoint staging pool: capacity must be > 0 bytes");
    wait_not_running(c);
    if (capacity == c->cap) return DC_OK;
    unsigned char *r = malloc(capacity);
    if (!r) return dc_error(DC_ERR_NOMEM, "checkpoint staging pool: cannot allocate %zu bytes", capacity);
    free(c->ring);
    c->ring = r;
    c->cap = capacity;
    return DC_OK;
}

static dc_status copy_job(job_t *j, const dc_ckpt_job *in)
{
    memset(j, 0, sizeof *j);
    j->nseg = in->nsegments;
    j->nfiles = in->nfiles;
    j->nwait = in->nwait;
    j->wait_timeout_s = in->wait_timeout_s;
    j->fsync = in->fsync;
    size_t ns = (size_t)(in->nsegments > 0 ? in->nsegments : 1);
    j->dir = dupstr(in->dir);
    j->seg_bytes = calloc(ns, sizeof *j->seg_bytes);
    j->seg_key = calloc(ns, sizeof *j->seg_key);
    j->order = calloc(ns, sizeof *j->order);
    j->files = calloc((size_t)(in->nfiles > 0 ? in->nfiles : 1), sizeof *j->files);
    j->wait_for = calloc((size_t)(in->nwait > 0 ? in->nwait : 1), sizeof *j->wait_for);
    if (!j->dir || !j->seg_bytes || !j->seg_key || !j->order || !j->files || !j->wait_for) goto nomem;
    for (int s = 0; s < in->nsegments; s++) {
        j->seg_bytes[s] = in->segments[s].nbytes;
        if (in->segments[s].key && !(j->seg_key[s] = dupstr(in->segments[s].key))) goto nomem;
    }
    int pos = 0;
    for (int f = 0; f < in->nfiles; f++) {
        const dc_ckpt_file *src = &in->files[f];
        file_t *dst = &j->files[f];
        dst->nsegs = src->nsegs;
        dst->head_len = src->head_len;
        if (!(dst->name = dupstr(src->name))) goto nomem;
        if (src->head_len) {
            if (!(dst->head = malloc(src->head_len))) goto nomem;
            memcpy(dst->head, src->head, src->head_len);
        }
        if (src->nsegs) {
            if (!(dst->segs = malloc((size_t)src->nsegs * sizeof *dst->segs))) goto nomem;
            memcpy(dst->segs, src->segs, (size_t)src->nsegs * sizeof *dst->segs);
            for (int k = 0; k < src->nsegs; k++) j->order[pos++] = src->segs[k];
        }
    }
    for (int i = 0; i < in->nwait; i++)
        if (!(j->wait_for[i] = dupstr(in->wait_for[i]))) goto nomem;
    if ((in->fragment_name && !(j->fragment_name = dupstr(in->fragment_name))) ||
        (in->manifest_name && !(j->manifest_name = dupstr(in->manifest_name))) ||
        (in->manifest_name && !(j->prefix = dupstr(in->manifest_prefix ? in->manifest_prefix : ""))) ||
        (in->manifest_name && !(j->suffix = dupstr(in->manifest_suffix ? in->manifest_suffix : ""))) ||
        (in->commit_to && !(j->commit_to = dupstr(in->commit_to))) ||
        (in->link_path && !(j->link_path = dupstr(in->link_path))) ||
        (in->link_path && !(j->link_target = dupstr(in->link_target ? in->link_target : ""))))
        goto nomem;
    return DC_OK;
nomem:
    job_clear(j);
    return dc_error(DC_ERR_NOMEM, "checkpoint: out of memory describing the job");
}

static dc_status check_job(const dc_ckpt_job *job)
{
    if (!job->dir || !*job->dir) return dc_error(DC_ERR_VALUE, "checkpoint job: no directory");
    if (job->nsegments < 0 || job->nfiles < 0 || job->nwait < 0)
        return dc_error(DC_ERR_VALUE, "checkpoint job: negative count");
    if (job->nwait && !job->manifest_name) return dc_error(DC_ERR_VALUE, "checkpoint job: wait_for without a manifest");
    if (job->link_path && !job->link_target) return dc_error(DC_ERR_VALUE, "checkpoint job: link without a target");
    /* every segment written exactly once: the ring is consumed in file order */
    char *seen = calloc((size_t)(job->nsegments > 0 ? job->nsegments : 1), 1);
    if (!seen) return dc_error(DC_ERR_NOMEM, "checkpoint: out of memory");
    dc_status st = DC_OK;
    for (int f = 0; f < job->nfiles && !st; f++) {
        const dc_ckpt_file *fl = &job->files[f];
        if (!fl->name || !*fl->name || strchr(fl->name, '/'))
            st = dc_error(DC_ERR_VALUE, "checkpoint job: file %d has no plain name", f);
        else if (fl->nsegs < 0 || (fl->head_len && !fl->head))
            st = dc_error(DC_ERR_VALUE, "checkpoint job: file '%s' is malformed", fl->name);
        for (int k = 0; k < fl->nsegs && !st; k++) {
            int s = fl->segs[k];
            if (s < 0 || s >= job->nsegments)
                st = dc_error(DC_ERR_INDEX, "checkpoint job: file '%s' names segment %d of %d", fl->name, s,
                              job->nsegments);
            else if (seen[s]++)
                st = dc_error(DC_ERR_VALUE, "checkpoint job: segment %d is written twice", s);
        }
    }
    for (int s = 0; s < job->nsegments && !st; s++) {
        if (!seen[s])
            st = dc_error(DC_ERR_VALUE, "checkpoint job: segment %d is in no file", s);
        else if (job->segments[s].nbytes && !job->segments[s].src)
            st = dc_error(DC_ERR_VALUE, "checkpoint job: segment %d has no data", s);
    }
    free(seen);
    return st;
}

/* Copy n bytes into the ring at `off` (contiguous); big copies split over the OpenMP threads. */
static void stage(unsigned char *dst, const unsigned char *src, size_t n)
{
    const size_t block = (size_t)4 << 20;
    if (n < 4 * block) {
        memcpy(dst, src, n);
        return;
    }
    long nb = (long)((n + block - 1) / block);
#pragma omp parallel for schedule(static)
    for (long b = 0; b < nb; b++) {
        size_t lo = (size_t)b * block, len = n - lo < block ? n - lo : block;
        memcpy(dst + lo, src + lo, len);
    }
}

/* The whole state fits the (empty) ring: copy it in 4 MiB pieces spread over the OpenMP threads,
 * whatever the tensors' sizes, then publish it at once (the writer waits meanwhile, leaving the
 * cores to the copy). Returns -1 when the piece list cannot be allocated (then the caller copies
 * segment by segment). */
static int stage_all(dc_ckpt *c, const dc_ckpt_job *job, const int *order, size_t total)
{
    const size_t piece = (size_t)4 << 20;
    size_t npieces = 0;
    for (int k = 0; k < job->nsegments; k++) npieces += (job->segments[order[k]].nbytes + piece - 1) / piece;
    typedef struct {
        unsigned char *dst;
        const unsigned char *src;
        size_t n;
    } span;
    span *v = malloc((npieces ? npieces : 1) * sizeof *v);
    if (!v) return -1;
    size_t off = 0, m = 0;
    for (int k = 0; k < job->nsegments; k++) {
        const dc_ckpt_segment *sg = &job->segments[order[k]];
        for (size_t lo = 0; lo < sg->nbytes; lo += piece) {
            size_t n = sg->nbytes - lo < piece ? sg->nbytes - lo : piece;
            v[m++] = (span){ c->ring + off + lo, (const unsigned char *)sg->src + lo, n };
        }
        off += sg->nbytes;
    }
    long nm = (long)m;
#pragma omp parallel for schedule(dynamic, 1) if (total >= ((size_t)16 << 20))
    for (long i = 0; i < nm; i++) memcpy(v[i].dst, v[i].src, v[i].n);
    free(v);
    pthread_mutex_lock(&c->mu);
    c->head = total;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

dc_status dc_ckpt_submit(dc_ckpt *c, const dc_ckpt_job *job)
{
    DC_TRY(check_job(job));
    pthread_mutex_lock(&c->mu);
    int busy = c->state != DC_CKPT_IDLE;
    pthread_mutex_unlock(&c->mu);
    if (busy)
        return dc_error(DC_ERR_VALUE, "checkpoint: a save is still in flight (or its result was not taken); wait "
                                      "for it first");
    job_clear(&c->job);
    DC_TRY(copy_job(&c->job, job));
    free(c->crcs);
    c->crcs = calloc((size_t)(job->nsegments > 0 ? job->nsegments : 1), sizeof *c->crcs);
    if (!c->crcs) {
        job_clear(&c->job);
        return dc_error(DC_ERR_NOMEM, "checkpoint: out of memory");
    }
    pthread_mutex_lock(&c->mu);
    c->head = c->tail = 0;
    c->failed = 0;
    c->status = DC_OK;
    c->msg[0] = 0;
    c->producing = 1;
    c->has_job = 1;
    c->state = DC_CKPT_RUNNING;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);

    /* the snapshot: every segment, in the order the writer consumes them */
    const int *order = c->job.order;
    size_t total = 0;
    for (int k = 0; k < job->nsegments; k++) total += job->segments[k].nbytes;
    if (total <= c->cap && stage_all(c, job, order, total) == 0) goto out; /* the usual case: one parallel copy */
    for (int k = 0; k < job->nsegments; k++) {
        const dc_ckpt_segment *sg = &job->segments[order[k]];
        const unsigned char *src = sg->src;
        size_t left = sg->nbytes;
        while (left) {
            pthread_mutex_lock(&c->mu);
            while (!c->failed && c->head - c->tail == c->cap) pthread_cond_wait(&c->cv, &c->mu);
            if (c->failed) {
                pthread_mutex_unlock(&c->mu);
                goto out;
            }
            size_t space = c->cap - (size_t)(c->head - c->tail);
            size_t off = (size_t)(c->head % c->cap);
            pthread_mutex_unlock(&c->mu);
            size_t n = left < space ? left : space;
            if (n > c->cap - off) n = c->cap - off;
            stage(c->ring + off, src, n);
            src += n;
            left -= n;
            pthread_mutex_lock(&c->mu);
            c->head += n;
            pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&c->mu);
        }
    }
out:
    pthread_mutex_lock(&c->mu);
    c->producing = 0;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return DC_OK; /* a writer failure is the job's result, taken with dc_ckpt_result */
}

dc_ckpt_state dc_ckpt_poll(dc_ckpt *c)
{
    pthread_mutex_lock(&c->mu);
    int s = c->state;
    pthread_mutex_unlock(&c->mu);
    return (dc_ckpt_state)s;
}

dc_status dc_ckpt_wait(dc_ckpt *c, double timeout_s, int *done)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    if (timeout_s >= 0) {
        double t = (double)until.tv_sec + 1e-9 * until.tv_nsec + timeout_s;
        until.tv_sec = (time_t)t;
        until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    }
    pthread_mutex_lock(&c->mu);
    while (c->state == DC_CKPT_RUNNING) {
        if (timeout_s < 0)
            pthread_cond_wait(&c->cv, &c->mu);
        else if (pthread_cond_timedwait(&c->cv, &c->mu, &until) == ETIMEDOUT)
            break;
    }
    *done = c->state != DC_CKPT_RUNNING;
    pthread_mutex_unlock(&c->mu);
    return DC_OK;
}

dc_status dc_ckpt_result(dc_ckpt *c, uint32_t *crcs, int nsegments, double *seconds, uint64_t *bytes)
{
    pthread_mutex_lock(&c->mu);
    int state = c->state;
    pthread_mutex_unlock(&c->mu);
    if (state != DC_CKPT_DONE) return dc_error(DC_ERR_VALUE, "checkpoint: no finished save to report");
    if (crcs) {
        if (nsegments != c->job.nseg)
            return dc_error(DC_ERR_VALUE, "checkpoint: result for %d segments asked, the job had %d", nsegments,
                            c->job.nseg);
        memcpy(crcs, c->crcs, (size_t)nsegments * sizeof *crcs);
    }
    if (seconds) *seconds = c->seconds;
    if (bytes) *bytes = c->bytes;
    dc_status st = c->status;
    if (st) dc_error(st, "%s", c->msg);
    pthread_mutex_lock(&c->mu);
    c->state = DC_CKPT_IDLE;
    pthread_mutex_unlock(&c->mu);
    job_clear(&c->job);
    return st;
}

void dc_ckpt_free(dc_ckpt *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1; /* a commit still waiting for other ranks gives up; everything else finishes */
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    wait_not_running(c);
    pthread_join(c->thread, NULL);
    job_clear(&c->job);
    free(c->crcs);
    free(c->ring);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}
