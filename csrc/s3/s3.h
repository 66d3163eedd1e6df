/* s3.h: an S3 (and S3-compatible) object-store client on libcurl, signing with AWS Signature V4.
 *
 * Why: training data and checkpoints live in object storage, and the loader must keep many
 * requests in flight without a Python thread per request. One client owns one curl multi handle
 * driven by one transfer thread; every call below is thread-safe and blocking for its caller (as
 * curl_easy_perform runs a private multi handle, these are thin waits on the shared engine), so
 * the loader's fetch threads each wait on their own request while the transfers share connections
 * (bounded by max_connections, reused across requests).
 *
 * It knows nothing of Python, tensors or the loader: it moves bytes between buffers and objects.
 * Configuration (credentials, region, endpoint) is resolved by the caller and passed in as plain
 * strings; the client copies them and never prints a secret (access keys, secret keys, session
 * tokens, signatures) in a message.
 *
 * Errors: DC_ERR_IO with a message "S3 <VERB> s3://bucket/key: <http> <Code>: <Message>" (or the
 * curl error) in the calling thread's error buffer; dc_s3_last_error() gives the structured parts.
 * Retries follow the AWS SDKs' standard mode (500/502/503/504, SlowDown, Throttling,
 * RequestTimeout, connection reset/refused, timeouts, truncated bodies; capped exponential backoff
 * with full jitter; a broken range resumes where it stopped); other 4xx fail at once.
 *
 * Fork: after fork() the child's first call rebuilds the engine (multi handle, thread) lazily; the
 * parent's transfers are not touched by the child. */
#ifndef DC_S3_H
#define DC_S3_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dc_s3 dc_s3;

typedef struct {
    const char *endpoint;   /* "http://127.0.0.1:9000"; NULL: https://s3.<region>.amazonaws.com */
    const char *region;     /* NULL: "us-east-1" */
    const char *access_key; /* NULL: anonymous (unsigned requests) */
    const char *secret_key;
    const char *session_token; /* NULL: none */
    int path_style;            /* 1: endpoint/bucket/key; 0: bucket.host/key (virtual host) */
    int max_connections;       /* <= 0: 16 */
    int max_attempts;          /* <= 0: 5 (first try included) */
    double connect_timeout_s;  /* <= 0: 10 */
    double stall_timeout_s;    /* a transfer receiving nothing this long fails (retried); <= 0: 30 */
    double backoff_base_s;     /* <= 0: 0.1 */
    double backoff_cap_s;      /* <= 0: 20 */
    int verify_tls;            /* 1 (default when the config is zeroed: see dc_s3_config_default) */
    const char *ca_file;       /* NULL: the system's */
} dc_s3_config;

/* A config with every default filled in (verify_tls = 1). */
dc_s3_config dc_s3_config_default(void);

dc_status dc_s3_init(dc_s3 **out, const dc_s3_config *cfg);
void dc_s3_free(dc_s3 *s3); /* NULL: no-op; waits for nothing: in-flight calls must have returned */

/* Bytes [offset, offset + length) of an object into dst (length bytes). Fails (DC_ERR_IO) unless
 * exactly that many bytes arrived; a range past the end fails with the object's size in the
 * message. *object_size (may be NULL) gets the object's total size from Content-Range. */
dc_status dc_s3_get_range(dc_s3 *s3, const char *bucket, const char *key, int64_t offset, int64_t length, void *dst,
                          int64_t *object_size);

/* A whole object into a malloc'd buffer (*data, *size; the caller frees). Large objects are read
 * as parallel range GETs of part_size bytes (<= 0: 8 MiB). */
dc_status dc_s3_get(dc_s3 *s3, const char *bucket, const char *key, int64_t part_size, void **data, int64_t *size);

/* HEAD: *size (and etag into etag_buf, may be NULL) of an object. A missing key: DC_ERR_IO with
 * http status 404 and code "NoSuchKey" in dc_s3_last_error. */
dc_status dc_s3_head(dc_s3 *s3, const char *bucket, const char *key, int64_t *size, char *etag_buf, size_t etag_cap);

/* One page of ListObjectsV2 (<= max_keys, <= 0: 1000). The result owns its strings. */
typedef struct {
    int n;
    char **keys;      /* (n,) */
    int64_t *sizes;   /* (n,) */
    int nprefixes;    /* common prefixes when a delimiter was given */
    char **prefixes;  /* (nprefixes,) */
    char *next_token; /* NULL when this was the last page */
} dc_s3_list_page;
dc_status dc_s3_list(dc_s3 *s3, const char *bucket, const char *prefix, const char *delimiter, const char *token,
                     int max_keys, dc_s3_list_page *out);
void dc_s3_list_page_clear(dc_s3_list_page *page);

dc_status dc_s3_put(dc_s3 *s3, const char *bucket, const char *key, const void *data, size_t len);
dc_status dc_s3_delete(dc_s3 *s3, const char *bucket, const char *key);

/* Multipart upload: write() buffers into parts of part_size (>= 5 MiB; <= 0: 16 MiB) and uploads
 * full parts in the background, up to max_inflight at once (<= 0: 4; write blocks beyond that);
 * finish() uploads the last part and completes (reading CompleteMultipartUpload's body: a 200 can
 * still carry an error); abort() (also called by finish/write on failure) aborts the upload so no
 * orphaned parts are left. An object smaller than one part is sent by finish() as one PUT.
 * The upload is freed by finish/abort whatever their status. A write that fails has already aborted
 * the upload on the server; the handle stays valid (later calls repeat the error) until the
 * caller's finish() or abort() frees it. */
typedef struct dc_s3_upload dc_s3_upload;
dc_status dc_s3_upload_init(dc_s3 *s3, const char *bucket, const char *key, int64_t part_size, int max_inflight,
                            dc_s3_upload **out);
dc_status dc_s3_upload_write(dc_s3_upload *up, const void *data, size_t len);
dc_status dc_s3_upload_finish(dc_s3_upload *up);
void dc_s3_upload_abort(dc_s3_upload *up);

/* The calling thread's last S3 failure, structured: HTTP status (0 for a transport error), S3
 * error code ("NoSuchKey", "SlowDown", "" when none), the curl error code (0 for none). */
typedef struct {
    int http_status;
    char code[64];
    int curl_code;
    int attempts;
} dc_s3_error;
const dc_s3_error *dc_s3_last_error(void);

/* Counters since init (for benchmarks and tests): requests sent, retries, bytes received/sent,
 * connections opened. */
typedef struct {
    int64_t requests, retries, bytes_in, bytes_out, connections;
} dc_s3_stats;
void dc_s3_get_stats(dc_s3 *s3, dc_s3_stats *out);

/* AWS Signature V4, exposed for the published test vectors: the Authorization header value for
 * a request (headers as "name:value" lines, already lowercase-trimmed or not — the signer
 * canonicalises), and the string-to-sign / canonical request for debugging. Writes into out. */
typedef struct {
    const char *method;         /* "GET" */
    const char *path;           /* the URI path, not yet encoded ("/my bucket/k+ey") */
    const char *query;          /* raw query "a=b&c" (not canonical: each part is
                                   percent-decoded, then encoded and sorted), or NULL */
    const char *const *headers; /* "Name: value" strings, NULL-terminated; must include host */
    const char *payload_hash;   /* hex SHA-256 of the body, or "UNSIGNED-PAYLOAD" */
    const char *amz_date;       /* "20150830T123600Z" */
    const char *region, *service;
    const char *access_key, *secret_key;
} dc_sigv4_request;
dc_status dc_sigv4_sign(const dc_sigv4_request *r, char *authorization, size_t auth_cap, char *canonical,
                        size_t canonical_cap, char *string_to_sign, size_t sts_cap);

#ifdef __cplusplus
}
#endif
#endif
