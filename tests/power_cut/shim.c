/*
 * Power-cut shim for tests/test_power_loss.py: an LD_PRELOAD library that keeps,
 * for each file of one directory, exactly the contents that the program asked the
 * operating system to make durable.
 *
 * Build:  gcc -shared -fPIC -O2 -o shim.so shim.c -ldl
 * Run:    LD_PRELOAD=shim.so POWERCUT_DIR=/abs/dir POWERCUT_SHADOW=/abs/shadow \
 *         POWERCUT_REPORT_FD=1 POWERCUT_RESUME_FD=N program ...
 *
 * fsync and fdatasync (the only sync calls the system libsqlite3 imports; Linux
 * SQLite also syncs the directory through fdatasync on a directory fd) first do
 * the real call, then copy the file's full current contents (path from
 * /proc/self/fd/N) to POWERCUT_SHADOW/<basename>, atomically (a temporary file,
 * then rename), for regular files directly inside POWERCUT_DIR. After a SIGKILL,
 * POWERCUT_SHADOW holds what a power cut at that moment could leave on disk at
 * worst: nothing written after a file's last sync survives. sync() and syncfs()
 * copy every file of the directory. sync_file_range and msync are passed through
 * and reported but copy nothing: they promise no durability (no disk-cache flush,
 * no metadata), so data they cover is still lost at a power cut.
 *
 * Each sync of a watched file or of the directory is reported as one line on
 * POWERCUT_REPORT_FD, written with a single write() so that it never interleaves
 * with the program's own lines on the same pipe:
 *     SYNC <call> <basename> <size>     (after the copy: that content is durable)
 *     FROZEN <call> <basename>          (see below; the sync has not happened)
 * Single-step mode: while the file POWERCUT_SHADOW/armed exists, each such sync
 * first reports FROZEN and blocks reading one byte from POWERCUT_RESUME_FD; the
 * test then either SIGKILLs the process (a power cut at the moment the sync was
 * requested: written but unsynced data is lost) or writes a byte to resume it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;

static int env_fd(const char *name) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : -1;
}

/* One line to the report fd in one write(); short lines on a pipe are atomic. */
static void report(const char *what, const char *call, const char *base, long long size) {
    int fd = env_fd("POWERCUT_REPORT_FD");
    char line[PATH_MAX + 64];
    int n;
    if (fd < 0)
        return;
    if (size >= 0)
        n = snprintf(line, sizeof line, "%s %s %s %lld\n", what, call, base, size);
    else
        n = snprintf(line, sizeof line, "%s %s %s\n", what, call, base);
    if (n > 0 && n < (int)sizeof line) {
        ssize_t ignored = write(fd, line, (size_t)n);
        (void)ignored;
    }
}

/* The basename of fd's file if it is POWERCUT_DIR itself ("." then) or a file directly in it. */
static int watched(int fd, char *base, size_t cap, int *is_dir) {
    const char *dir = getenv("POWERCUT_DIR");
    char link[64], path[PATH_MAX];
    ssize_t n;
    size_t dlen;
    struct stat st;
    if (!dir || !*dir)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    dlen = strlen(dir);
    if (fstat(fd, &st) != 0)
        return 0;
    *is_dir = S_ISDIR(st.st_mode);
    if (strcmp(path, dir) == 0 && *is_dir) {
        snprintf(base, cap, ".");
        return 1;
    }
    if (strncmp(path, dir, dlen) != 0 || path[dlen] != '/' || strchr(path + dlen + 1, '/') != NULL)
        return 0;
    if (!S_ISREG(st.st_mode))
        return 0;
    snprintf(base, cap, "%s", path + dlen + 1);
    return 1;
}

/* Copy POWERCUT_DIR/base to POWERCUT_SHADOW/base atomically; returns the size copied or -1. */
static long long copy_to_shadow(const char *base) {
    const char *dir = getenv("POWERCUT_DIR"), *shadow = getenv("POWERCUT_SHADOW");
    char src[PATH_MAX], tmp[PATH_MAX], dst[PATH_MAX], buf[1 << 16];
    long long total = 0;
    ssize_t got;
    int in, out;
    if (!shadow || !*shadow)
        return -1;
    snprintf(src, sizeof src, "%s/%s", dir, base);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", shadow, base);
    snprintf(dst, sizeof dst, "%s/%s", shadow, base);
    in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return -1;
    }
    while ((got = read(in, buf, sizeof buf)) != 0) {
        if (got < 0) {
            if (errno == EINTR)
                continue;
            total = -1;
            break;
        }
        for (ssize_t off = 0; off < got;) {
            ssize_t w = write(out, buf + off, (size_t)(got - off));
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                total = -1;
                break;
            }
            off += w;
        }
        if (total < 0)
            break;
        total += got;
    }
    close(in);
    close(out);
    if (total < 0 || rename(tmp, dst) != 0) {
        unlink(tmp);
        return -1;
    }
    return total;
}

/* Single-step mode: report FROZEN and block until the test resumes (or kills) the process. */
static void maybe_freeze(const char *call, const char *base) {
    const char *shadow = getenv("POWERCUT_SHADOW");
    char armed[PATH_MAX];
    int fd = env_fd("POWERCUT_RESUME_FD");
    char c;
    if (!shadow || fd < 0)
        return;
    snprintf(armed, sizeof armed, "%s/armed", shadow);
    if (access(armed, F_OK) != 0)
        return;
    report("FROZEN", call, base, -1);
    for (;;) {
        ssize_t n = read(fd, &c, 1);
        if (n >= 0 || errno != EINTR)
            return; /* a byte: resume; EOF (the test is gone): go on */
    }
}

static int (*real_fn(const char *name))(int) {
    return (int (*)(int))dlsym(RTLD_NEXT, name);
}

static int synced(const char *call, int fd) {
    char base[PATH_MAX];
    int is_dir = 0, rc, saved;
    int (*real)(int) = real_fn(call);
    if (!watched(fd, base, sizeof base, &is_dir))
        return real(fd);
    pthread_mutex_lock(&shim_lock);
    maybe_freeze(call, base);
    rc = real(fd);
    saved = errno;
    if (rc == 0)
        report("SYNC", call, is_dir ? "./" : base, is_dir ? -1 : copy_to_shadow(base));
    pthread_mutex_unlock(&shim_lock);
    errno = saved;
    return rc;
}

int fsync(int fd) { return synced("fsync", fd); }
int fdatasync(int fd) { return synced("fdatasync", fd); }

/* sync()/syncfs(): every regular file of the watched directory becomes durable. */
static void copy_all(const char *call) {
    const char *dir = getenv("POWERCUT_DIR");
    DIR *d;
    struct dirent *e;
    if (!dir || !*dir || !(d = opendir(dir)))
        return;
    while ((e = readdir(d)) != NULL) {
        char path[PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
            report("SYNC", call, e->d_name, copy_to_shadow(e->d_name));
    }
    closedir(d);
}

void sync(void) {
    void (*real)(void) = (void (*)(void))dlsym(RTLD_NEXT, "sync");
    pthread_mutex_lock(&shim_lock);
    maybe_freeze("sync", "*");
    real();
    copy_all("sync");
    pthread_mutex_unlock(&shim_lock);
}

int syncfs(int fd) {
    int rc, saved;
    int (*real)(int) = real_fn("syncfs");
    pthread_mutex_lock(&shim_lock);
    maybe_freeze("syncfs", "*");
    rc = real(fd);
    saved = errno;
    if (rc == 0)
        copy_all("syncfs");
    pthread_mutex_unlock(&shim_lock);
    errno = saved;
    return rc;
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    int (*real)(int, off_t, off_t, unsigned int) =
        (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    char base[PATH_MAX];
    int is_dir = 0;
    if (watched(fd, base, sizeof base, &is_dir))
        report("NODURABILITY", "sync_file_range", base, -1);
    return real(fd, offset, nbytes, flags);
}

int msync(void *addr, size_t length, int flags) {
    int (*real)(void *, size_t, int) = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "msync");
    report("NODURABILITY", "msync", "?", -1);
    return real(addr, length, flags);
}
