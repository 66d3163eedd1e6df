/* status.c: status names and the thread-local error buffer (see status.h). */
#include "status.h"

#include <stdio.h>
#include <stdlib.h>

static _Thread_local char err_buf[1024];

static const char *const status_names[] = {
    "DC_OK",        "DC_ERR_NOMEM",    "DC_ERR_SHAPE",       "DC_ERR_DTYPE", "DC_ERR_DEVICE",   "DC_ERR_VALUE",
    "DC_ERR_INDEX", "DC_ERR_AUTOGRAD", "DC_ERR_UNSUPPORTED", "DC_ERR_CUDA",  "DC_ERR_INTERNAL", "DC_ERR_CALLBACK",
    "DC_ERR_COMM",  "DC_ERR_TIMEOUT",  "DC_ERR_DESYNC",      "DC_ERR_IO",    "DC_ERR_FORMAT",
};
_Static_assert(sizeof(status_names) / sizeof(status_names[0]) == DC_STATUS_COUNT,
               "status_names must name every dc_status");

const char *dc_strerror(dc_status s)
{
    if ((unsigned)s >= DC_STATUS_COUNT) return "DC_ERR_UNKNOWN";
    return status_names[s];
}

dc_status dc_error(dc_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return s;
}

const char *dc_last_error(void)
{
    return err_buf;
}
void dc_clear_error(void)
{
    err_buf[0] = '\0';
}

void dc_assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "dutycycle: internal invariant broken: %s (%s:%d)\n", what, file, line);
    abort();
}
