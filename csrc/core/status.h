/* status.h: dutycycle's one status enum and the per-thread error buffer.
 *
 * Every public C function returns dc_status. The codes never change meaning or number. On failure
 * the function also leaves a readable message (what was wrong, which shape/dtype/device) in the
 * calling thread's error buffer; the Python layer turns the pair into one exception. */
#ifndef DC_STATUS_H
#define DC_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DC_OK = 0,
    DC_ERR_NOMEM = 1,       /* allocation failed (host or device) */
    DC_ERR_SHAPE = 2,       /* shapes do not fit the op */
    DC_ERR_DTYPE = 3,       /* dtype not supported or mismatched */
    DC_ERR_DEVICE = 4,      /* operands on different devices, or no such device */
    DC_ERR_VALUE = 5,       /* bad argument value (index out of range, negative size, ...) */
    DC_ERR_INDEX = 6,       /* an index is out of range */
    DC_ERR_AUTOGRAD = 7,    /* misuse of autograd (freed graph, non-scalar backward, ...) */
    DC_ERR_UNSUPPORTED = 8, /* op has no kernel for this device/dtype */
    DC_ERR_CUDA = 9,        /* error from the CUDA runtime or a CUDA library */
    DC_ERR_INTERNAL = 10,   /* broken invariant; a bug in dutycycle */
    DC_ERR_CALLBACK = 11,   /* a user callback (e.g. a Python hook) failed */
    DC_ERR_COMM = 12,       /* communication failed: a peer died, the job aborted, an MPI/NCCL error */
    DC_ERR_TIMEOUT = 13,    /* a collective outlived the watchdog's timeout (or a wait's own timeout) */
    DC_ERR_DESYNC = 14,     /* the ranks issued different collectives (fingerprint mismatch) */
    DC_ERR_IO = 15,         /* a file, network or object-store (S3) transfer failed */
    DC_ERR_FORMAT = 16,     /* malformed data: a corrupt tar, .npy or JPEG */
    DC_STATUS_COUNT
} dc_status;

/* Static name of a status code ("DC_ERR_SHAPE"). Never NULL. */
const char *dc_strerror(dc_status s);

/* Record `s` with a printf-style message in this thread's error buffer; returns `s` so callers can
 * write `return dc_error(DC_ERR_SHAPE, "...")`. */
dc_status dc_error(dc_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* This thread's last message (empty string when none). */
const char *dc_last_error(void);
void dc_clear_error(void);

#define DC_TRY(expr)                              \
    do {                                          \
        dc_status dc_try_s_ = (expr);             \
        if (dc_try_s_ != DC_OK) return dc_try_s_; \
    } while (0)

/* Abort on a broken internal invariant (never for user errors). */
#define DC_ASSERT(cond)                                         \
    do {                                                        \
        if (!(cond)) dc_assert_fail(#cond, __FILE__, __LINE__); \
    } while (0)
void dc_assert_fail(const char *what, const char *file, int line) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif
#endif
