/* client.c: the S3 client's engine (one curl multi handle, one transfer thread) and the blocking
 * calls of s3.h on top of it.
 *
 * Shape: a call builds a request (URL, canonical query, payload hash: the pure-CPU work is done in
 * the caller's thread), queues it and waits on a condition variable. The transfer thread owns the
 * multi handle: it signs each attempt (the date changes), starts at most max_connections
 * transfers at once, and on completion decides, per the AWS SDKs' standard retry mode, whether the
 * request is finished or goes back in after a jittered backoff. Every check that a body is whole
 * (Content-Length, Content-Range) happens there too, so a truncated body is never handed to a
 * caller: a broken range resumes from the bytes already stored. Callers therefore only ever see
 * the final outcome, and many of them (the loader's fetch threads, the parallel parts of a large
 * GET or an upload) share one engine and its connection cache.
 *
 * Fork: a pthread_atfork child handler drops every client's engine in the child (the thread is
 * gone there; the parent's curl handles and their sockets are left alone, leaked, so nothing is
 * ever sent on a connection the parent still uses); the child's first call builds a new engine.
 *
 * Secrets: the secret key and the session token are only read by the signer; no message built
 * here names anything but the verb, the s3:// URL, the HTTP status, S3's code and message, or
 * curl's error text (which never holds our headers). */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "s3-impl.h"

#define EMPTY_SHA256     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define ERRBODY_MAX      (64 * 1024)
#define MIN_PART         (5LL << 20)
#define MAX_PARTS        10000
#define MAX_SINGLE_PUT   (5LL << 30)
#define DEFAULT_GET_PART (8LL << 20)
#define DEFAULT_UP_PART  (16LL << 20)

/* --- requests -------------------------------------------------------------------------------- */

/* Callers waiting on a group of requests (one request, or all ranges of a GET, or an upload's
 * parts in flight): pending counts the unfinished ones; signalled under the client's mutex. */
typedef struct {
    pthread_cond_t cv;
    int pending;
} s3_batch;

typedef enum { SINK_GROW, SINK_FIXED } sink_kind;

typedef struct s3_req s3_req;
struct s3_req {
    dc_s3 *s3;
    s3_req *next; /* in the incoming / ready / delayed list */
    /* what is sent (built in the caller's thread) */
    const char *verb;                        /* for messages: GET, HEAD, PUT, DELETE, LIST, POST */
    const char *method;                      /* HTTP method */
    char *url, *path, *host, *query, *where; /* where: "s3://bucket/key" */
    const char *body;
    size_t body_len, body_pos;
    char payload_hash[65];
    char *if_match;
    const char *content_type;
    int64_t range_off, range_len; /* range_len < 0: no Range header */
    int check_body_error;         /* a 200 may carry <Error> (CompleteMultipartUpload) */
    /* where the body goes */
    sink_kind sink;
    char *dst; /* SINK_FIXED: range_len bytes */
    s3_buf grow;
    int64_t got; /* body bytes stored (for ranges: across attempts, the resume point) */
    /* this attempt (transfer thread) */
    CURL *easy;
    struct curl_slist *hdrs;
    char errbuf[CURL_ERROR_SIZE];
    long status;
    int64_t content_length, cr_start, cr_end, cr_total;
    int64_t resp_pos; /* object offset of the next body byte of this response; -1 before the first */
    int64_t attempt_bytes;
    int enough, bad_range, stalled;
    curl_off_t last_dl, last_ul; /* progress seen by on_progress */
    double last_progress;        /* monotonic time of the last byte moved */
    s3_buf errbody;
    char etag[160];
    double retry_at;
    /* outcome */
    int attempts;
    int64_t total; /* object size when known, else -1 */
    dc_status st;
    dc_s3_error err;
    char msg[1024];
    s3_batch *batch;
    int done; /* set under the client's mutex when finished */
};

struct dc_s3 {
    char *scheme, *authority, *region, *access_key, *secret_key, *session_token, *ca_file;
    int path_style, max_connections, max_attempts, verify_tls;
    double connect_timeout_s, stall_timeout_s, backoff_base_s, backoff_cap_s;

    pthread_mutex_t mu; /* the incoming queue, engine start/stop, every batch */
    CURLM *multi;
    pthread_t thread;
    int running, stop;
    pid_t pid;
    s3_req *in_head, *in_tail;
    /* the transfer thread's own */
    s3_req *ready_head, *ready_tail, *delayed;
    int active;
    uint64_t rng;

    int64_t requests, retries, bytes_in, bytes_out, connections; /* atomics */
    dc_s3 *next_client, *prev_client;                            /* the fork handler's list */
};

static _Thread_local dc_s3_error tl_err;

const dc_s3_error *dc_s3_last_error(void)
{
    return &tl_err;
}

/* --- process-wide: curl_global_init once, the client list for the fork handler --------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_OK;
static pthread_mutex_t clients_mu = PTHREAD_MUTEX_INITIALIZER;
static dc_s3 *clients;

static void fork_prepare(void)
{
    pthread_mutex_lock(&clients_mu);
    for (dc_s3 *c = clients; c; c = c->next_client) pthread_mutex_lock(&c->mu);
}

static void fork_parent(void)
{
    for (dc_s3 *c = clients; c; c = c->next_client) pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&clients_mu);
}

/* In the child: the transfer threads do not exist. Forget (leak) each engine: cleaning up the
 * parent's multi handle could send TLS close-notify on sockets the parent still uses. */
static void fork_child(void)
{
    for (dc_s3 *c = clients; c; c = c->next_client) {
        c->multi = NULL;
        c->running = c->stop = 0;
        c->in_head = c->in_tail = NULL;
        c->ready_head = c->ready_tail = c->delayed = NULL;
        c->active = 0;
        c->pid = getpid();
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&clients_mu);
}

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (global_rc == CURLE_OK) pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* --- small helpers ----------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double rand01(dc_s3 *s3)
{
    /* xorshift64*: jitter only, not security */
    uint64_t x = s3->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s3->rng = x;
    return (double)((x * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static char *dupstr(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void stat_add(int64_t *v, int64_t d)
{
    __atomic_fetch_add(v, d, __ATOMIC_RELAXED);
}

static void free_secret(char *s)
{
    if (!s) return;
    OPENSSL_cleanse(s, strlen(s));
    free(s);
}

/* --- config, init, free ------------------------------------------------------------------------ */

dc_s3_config dc_s3_config_default(void)
{
    dc_s3_config c;
    memset(&c, 0, sizeof c);
    c.region = "us-east-1";
    c.max_connections = 16;
    c.max_attempts = 5;
    c.connect_timeout_s = 10;
    c.stall_timeout_s = 30;
    c.backoff_base_s = 0.1;
    c.backoff_cap_s = 20;
    c.verify_tls = 1;
    return c;
}

dc_status dc_s3_init(dc_s3 **out, const dc_s3_config *cfg)
{
    if (!out) return dc_error(DC_ERR_VALUE, "dc_s3_init: out is NULL");
    *out = NULL;
    dc_s3_config d = dc_s3_config_default();
    if (!cfg) cfg = &d;
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK)
        return dc_error(DC_ERR_IO, "S3: curl_global_init failed: %s", curl_easy_strerror(global_rc));
    if (cfg->access_key && !cfg->secret_key)
        return dc_error(DC_ERR_VALUE, "S3: an access key was given without a secret key");
    dc_s3 *s3 = calloc(1, sizeof *s3);
    if (!s3) return dc_error(DC_ERR_NOMEM, "S3: out of memory");
    const char *region = cfg->region && *cfg->region ? cfg->region : "us-east-1";
    char ep[512];
    const char *endpoint = cfg->endpoint;
    if (!endpoint || !*endpoint) {
        snprintf(ep, sizeof ep, "https://s3.%s.amazonaws.com", region);
        endpoint = ep;
    }
    const char *sep = strstr(endpoint, "://");
    if (!sep || (strncasecmp(endpoint, "http", 4) != 0) ||
        (sep - endpoint != 4 && !(sep - endpoint == 5 && tolower((unsigned char)endpoint[4]) == 's'))) {
        free(s3);
        return dc_error(DC_ERR_VALUE, "S3: endpoint '%.200s' must be http://host[:port] or https://host[:port]",
                        endpoint);
    }
    s3->scheme = strndup(endpoint, (size_t)(sep - endpoint));
    for (char *p = s3->scheme; p && *p; p++) *p = (char)tolower((unsigned char)*p);
    const char *auth = sep + 3;
    size_t alen = strcspn(auth, "/?#");
    const char *rest = auth + alen;
    while (*rest == '/') rest++;
    if (alen == 0 || *rest) {
        free(s3->scheme);
        free(s3);
        return dc_error(DC_ERR_VALUE, "S3: endpoint '%.200s' must be scheme://host[:port] without a path", endpoint);
    }
    s3->authority = strndup(auth, alen);
    s3->region = strdup(region);
    s3->access_key = cfg->access_key && *cfg->access_key ? strdup(cfg->access_key) : NULL;
    s3->secret_key = s3->access_key ? dupstr(cfg->secret_key) : NULL;
    s3->session_token = s3->access_key && cfg->session_token && *cfg->session_token ? strdup(cfg->session_token) : NULL;
    s3->ca_file = cfg->ca_file && *cfg->ca_file ? strdup(cfg->ca_file) : NULL;
    s3->path_style = cfg->path_style;
    s3->max_connections = cfg->max_connections > 0 ? cfg->max_connections : 16;
    s3->max_attempts = cfg->max_attempts > 0 ? cfg->max_attempts : 5;
    s3->connect_timeout_s = cfg->connect_timeout_s > 0 ? cfg->connect_timeout_s : 10;
    s3->stall_timeout_s = cfg->stall_timeout_s > 0 ? cfg->stall_timeout_s : 30;
    s3->backoff_base_s = cfg->backoff_base_s > 0 ? cfg->backoff_base_s : 0.1;
    s3->backoff_cap_s = cfg->backoff_cap_s > 0 ? cfg->backoff_cap_s : 20;
    s3->verify_tls = cfg->verify_tls;
    s3->pid = getpid();
    s3->rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)(uintptr_t)s3 ^ (uint64_t)getpid() ^ 0x9E3779B97F4A7C15ULL;
    if (!s3->scheme || !s3->authority || !s3->region || (cfg->access_key && *cfg->access_key && !s3->access_key) ||
        (s3->access_key && !s3->secret_key)) {
        dc_s3_free(s3);
        return dc_error(DC_ERR_NOMEM, "S3: out of memory");
    }
    pthread_mutex_init(&s3->mu, NULL);
    pthread_mutex_lock(&clients_mu);
    s3->next_client = clients;
    if (clients) clients->prev_client = s3;
    clients = s3;
    pthread_mutex_unlock(&clients_mu);
    *out = s3;
    return DC_OK;
}

static void *engine_main(void *arg);

void dc_s3_free(dc_s3 *s3)
{
    if (!s3) return;
    pthread_mutex_lock(&clients_mu);
    int listed = clients == s3 || s3->prev_client;
    if (listed) {
        if (s3->prev_client)
            s3->prev_client->next_client = s3->next_client;
        else
            clients = s3->next_client;
        if (s3->next_client) s3->next_client->prev_client = s3->prev_client;
    }
    pthread_mutex_unlock(&clients_mu);
    if (listed) {
        pthread_mutex_lock(&s3->mu);
        int running = s3->running;
        s3->stop = 1;
        if (running) curl_multi_wakeup(s3->multi);
        pthread_mutex_unlock(&s3->mu);
        if (running) pthread_join(s3->thread, NULL);
        if (s3->multi) curl_multi_cleanup(s3->multi);
        pthread_mutex_destroy(&s3->mu);
    }
    free(s3->scheme);
    free(s3->authority);
    free(s3->region);
    free(s3->access_key);
    free_secret(s3->secret_key);
    free_secret(s3->session_token);
    free(s3->ca_file);
    free(s3);
}

void dc_s3_get_stats(dc_s3 *s3, dc_s3_stats *out)
{
    if (!s3 || !out) return;
    out->requests = __atomic_load_n(&s3->requests, __ATOMIC_RELAXED);
    out->retries = __atomic_load_n(&s3->retries, __ATOMIC_RELAXED);
    out->bytes_in = __atomic_load_n(&s3->bytes_in, __ATOMIC_RELAXED);
    out->bytes_out = __atomic_load_n(&s3->bytes_out, __ATOMIC_RELAXED);
    out->connections = __atomic_load_n(&s3->connections, __ATOMIC_RELAXED);
}

/* --- building a request (caller's thread) ------------------------------------------------------ */

static void req_free(s3_req *r)
{
    if (!r) return;
    if (r->easy) curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->hdrs);
    free(r->url);
    free(r->path);
    free(r->host);
    free(r->query);
    free(r->where);
    free(r->if_match);
    s3_buf_free(&r->grow);
    s3_buf_free(&r->errbody);
    free(r);
}

/* A request for bucket/key (key "" or NULL: the bucket itself) with query params. NULL: out of
 * memory (the error is set). */
static s3_req *req_new(dc_s3 *s3, const char *verb, const char *method, const char *bucket, const char *key,
                       const s3_param *params, int np)
{
    s3_req *r = calloc(1, sizeof *r);
    if (!r) {
        dc_error(DC_ERR_NOMEM, "S3: out of memory");
        return NULL;
    }
    if (!key) key = "";
    r->s3 = s3;
    r->verb = verb;
    r->method = method;
    r->range_len = -1;
    r->total = -1;
    memcpy(r->payload_hash, EMPTY_SHA256, 65);
    s3_buf path = { 0 }, url = { 0 }, q = { 0 }, where = { 0 };
    int oom = 0;
    if (s3->path_style) {
        oom |= s3_buf_appendf(&path, "/%s", bucket);
        if (*key) oom |= s3_buf_appendf(&path, "/%s", key);
        r->host = strdup(s3->authority);
    } else {
        oom |= s3_buf_appendf(&path, "/%s", key);
        size_t n = strlen(bucket) + strlen(s3->authority) + 2;
        if ((r->host = malloc(n))) snprintf(r->host, n, "%s.%s", bucket, s3->authority);
    }
    oom |= s3_canonical_query(&q, params, np);
    oom |= s3_buf_appendf(&url, "%s://%s", s3->scheme, r->host ? r->host : "");
    if (path.data) oom |= s3_uri_encode(&url, path.data, path.len, 1);
    if (q.len) oom |= s3_buf_appendf(&url, "?%s", q.data);
    oom |= s3_buf_appendf(&where, "s3://%s/%s", bucket, key);
    r->path = path.data;
    r->url = url.data;
    r->query = q.data;
    r->where = where.data;
    if (oom || !r->host || !r->path || !r->url || !r->query || !r->where) {
        req_free(r);
        dc_error(DC_ERR_NOMEM, "S3: out of memory");
        return NULL;
    }
    return r;
}

/* --- the transfer thread ------------------------------------------------------------------------ */

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    s3_req *r = ud;
    size_t len = sz * n;
    if (len >= 5 && !memcmp(p, "HTTP/", 5)) { /* a status line: a new response (also after 100) */
        const char *sp = memchr(p, ' ', len);
        r->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        r->content_length = r->cr_start = r->cr_end = r->cr_total = -1;
        r->etag[0] = '\0';
        return len;
    }
    const char *colon = memchr(p, ':', len);
    if (!colon) return len;
    size_t nl = (size_t)(colon - p);
    const char *v = colon + 1, *e = p + len;
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ')) e--;
    char val[256];
    size_t vl = (size_t)(e - v) < sizeof val - 1 ? (size_t)(e - v) : sizeof val - 1;
    memcpy(val, v, vl);
    val[vl] = '\0';
    if (nl == 14 && !strncasecmp(p, "content-length", 14)) {
        r->content_length = strtoll(val, NULL, 10);
    } else if (nl == 13 && !strncasecmp(p, "content-range", 13)) {
        long long a, b, t;
        if (sscanf(val, "bytes %lld-%lld/%lld", &a, &b, &t) == 3) {
            r->cr_start = a;
            r->cr_end = b;
            r->cr_total = t;
        } else if (sscanf(val, "bytes */%lld", &t) == 1) {
            r->cr_total = t;
        } else if (sscanf(val, "bytes %lld-%lld/*", &a, &b) == 2) {
            r->cr_start = a;
            r->cr_end = b;
        }
    } else if (nl == 4 && !strncasecmp(p, "etag", 4)) {
        snprintf(r->etag, sizeof r->etag, "%.150s", val);
    }
    return len;
}

static int is_2xx(long s)
{
    return s >= 200 && s < 300;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    s3_req *r = ud;
    size_t len = sz * n, all = len;
    stat_add(&r->s3->bytes_in, (int64_t)len);
    if (!is_2xx(r->status)) {
        size_t room = r->errbody.len < ERRBODY_MAX ? ERRBODY_MAX - r->errbody.len : 0;
        if (s3_buf_append(&r->errbody, p, len < room ? len : room)) return 0;
        return len;
    }
    r->attempt_bytes += (int64_t)len;
    if (r->range_len < 0) { /* a whole body */
        if (s3_buf_append(&r->grow, p, len)) return 0;
        r->got += (int64_t)len;
        return len;
    }
    int64_t want = r->range_off + r->got; /* the object offset we need next */
    if (r->resp_pos < 0) {
        if (r->status == 206) {
            if (r->cr_start != want) { /* not the range we asked for */
                r->bad_range = 1;
                return 0;
            }
            r->resp_pos = r->cr_start;
        } else {
            r->resp_pos = 0; /* 200: the server ignored Range and sends the whole object */
        }
    }
    if (r->resp_pos < want) { /* only after a 200: skip to where we are */
        int64_t skip = want - r->resp_pos;
        if ((int64_t)len <= skip) {
            r->resp_pos += (int64_t)len;
            return all;
        }
        p += skip;
        len -= (size_t)skip;
        r->resp_pos += skip;
    }
    size_t take = len;
    if (r->sink == SINK_FIXED) {
        int64_t room = r->range_len - r->got;
        if ((int64_t)take > room) take = (size_t)room;
        memcpy(r->dst + r->got, p, take);
    } else if (r->status == 206 || r->range_len >= 0) {
        if (s3_buf_append(&r->grow, p, take)) return 0;
    }
    r->got += (int64_t)take;
    r->resp_pos += (int64_t)take;
    if (r->sink == SINK_FIXED && r->got == r->range_len && (take < len || r->status == 200)) {
        if (take < len && r->status == 206) {
            r->bad_range = 1; /* more than the range we asked for */
            return 0;
        }
        r->enough = 1; /* the slice of a whole-object reply: stop reading it */
        return 0;
    }
    return all;
}

static double now_s(void);

/* Stall detection: no byte moved either way for stall_timeout_s (waiting for the response
 * included). curl's LOW_SPEED check averages over a window of seconds, so a transfer that sent a
 * burst and then went silent would only be caught several seconds late; this callback runs about
 * once a second even when idle. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    s3_req *r = ud;
    double t = now_s();
    if (dlnow != r->last_dl || ulnow != r->last_ul) {
        r->last_dl = dlnow;
        r->last_ul = ulnow;
        r->last_progress = t;
        return 0;
    }
    if (t - r->last_progress > r->s3->stall_timeout_s) {
        r->stalled = 1;
        return 1; /* abort: CURLE_ABORTED_BY_CALLBACK, retried */
    }
    return 0;
}

static size_t on_read(char *p, size_t sz, size_t n, void *ud)
{
    s3_req *r = ud;
    size_t want = sz * n, left = r->body_len - r->body_pos;
    if (want > left) want = left;
    if (want) memcpy(p, r->body + r->body_pos, want);
    r->body_pos += want;
    return want;
}

static int on_seek(void *ud, curl_off_t off, int origin)
{
    s3_req *r = ud;
    if (origin != SEEK_SET || off < 0 || (size_t)off > r->body_len) return CURL_SEEKFUNC_FAIL;
    r->body_pos = (size_t)off;
    return CURL_SEEKFUNC_OK;
}

#define SETOPT(opt, val) ok &= curl_easy_setopt(e, opt, val) == CURLE_OK

/* Sign and start one attempt; DC_OK or a failure that finishes the request. */
static dc_status attempt_start(dc_s3 *s3, s3_req *r)
{
    if (r->easy)
        curl_easy_reset(r->easy);
    else if (!(r->easy = curl_easy_init()))
        return dc_error(DC_ERR_NOMEM, "curl_easy_init failed");
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    r->status = 0;
    r->content_length = r->cr_start = r->cr_end = r->cr_total = -1;
    r->resp_pos = -1;
    r->attempt_bytes = 0;
    r->enough = r->bad_range = r->stalled = 0;
    r->last_dl = r->last_ul = 0;
    r->last_progress = now_s();
    r->errbody.len = 0;
    r->etag[0] = r->errbuf[0] = '\0';
    r->body_pos = 0;
    if (r->range_len < 0) { /* whole bodies restart; ranges resume from r->got */
        r->got = 0;
        r->grow.len = 0;
    }

    char amz_date[17], range[80] = "", h_host[300], h_sha[100], h_date[40];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(amz_date, sizeof amz_date, "%Y%m%dT%H%M%SZ", &tm);
    if (r->range_len >= 0)
        snprintf(range, sizeof range, "bytes=%lld-%lld", (long long)(r->range_off + r->got),
                 (long long)(r->range_off + r->range_len - 1));
    snprintf(h_host, sizeof h_host, "Host: %s", r->host);
    snprintf(h_sha, sizeof h_sha, "x-amz-content-sha256: %s", r->payload_hash);
    snprintf(h_date, sizeof h_date, "x-amz-date: %s", amz_date);
    s3_buf tok = { 0 }, rng = { 0 }, auth = { 0 };
    int oom = 0;
    if (s3->session_token) oom |= s3_buf_appendf(&tok, "x-amz-security-token: %s", s3->session_token);
    if (*range) oom |= s3_buf_appendf(&rng, "Range: %s", range);
    const char *hv[6];
    int nh = 0;
    hv[nh++] = h_host;
    hv[nh++] = h_sha;
    hv[nh++] = h_date;
    if (tok.data) hv[nh++] = tok.data;
    if (rng.data) hv[nh++] = rng.data;
    hv[nh] = NULL;
    struct curl_slist *h = NULL;
    for (int i = 0; i < nh && !oom; i++) {
        struct curl_slist *nx = curl_slist_append(h, hv[i]);
        if (!nx) oom = 1;
        h = nx ? nx : h;
    }
    dc_status st = DC_OK;
    if (s3->access_key && !oom) {
        char authz[1024];
        dc_sigv4_request sr = { .method = r->method,
                                .path = r->path,
                                .query = r->query,
                                .headers = hv,
                                .payload_hash = r->payload_hash,
                                .amz_date = amz_date,
                                .region = s3->region,
                                .service = "s3",
                                .access_key = s3->access_key,
                                .secret_key = s3->secret_key };
        st = dc_sigv4_sign(&sr, authz, sizeof authz, NULL, 0, NULL, 0);
        if (!st) oom |= s3_buf_appendf(&auth, "Authorization: %s", authz);
        OPENSSL_cleanse(authz, sizeof authz);
        if (!st && !oom) {
            struct curl_slist *nx = curl_slist_append(h, auth.data);
            if (!nx) oom = 1;
            h = nx ? nx : h;
        }
    }
    if (auth.data) OPENSSL_cleanse(auth.data, auth.len);
    if (tok.data) OPENSSL_cleanse(tok.data, tok.len);
    s3_buf_free(&tok);
    s3_buf_free(&rng);
    s3_buf_free(&auth);
    char extra[3][220];
    int ne = 0;
    snprintf(extra[ne++], sizeof extra[0], "Expect:"); /* no 100-continue round trip */
    if (r->if_match) snprintf(extra[ne++], sizeof extra[0], "If-Match: %.200s", r->if_match);
    if (r->content_type) snprintf(extra[ne++], sizeof extra[0], "Content-Type: %.200s", r->content_type);
    for (int i = 0; i < ne && !oom; i++) {
        struct curl_slist *nx = curl_slist_append(h, extra[i]);
        if (!nx) oom = 1;
        h = nx ? nx : h;
    }
    r->hdrs = h;
    if (st) return st;
    if (oom) return dc_error(DC_ERR_NOMEM, "out of memory");

    CURL *e = r->easy;
    int ok = 1;
    SETOPT(CURLOPT_URL, r->url);
    SETOPT(CURLOPT_HTTPHEADER, r->hdrs);
    SETOPT(CURLOPT_PRIVATE, r);
    SETOPT(CURLOPT_ERRORBUFFER, r->errbuf);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_PATH_AS_IS, 1L); /* keys may hold "/./" or "/../": send them as signed */
    SETOPT(CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(CURLOPT_HEADERDATA, r);
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, r);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)(s3->connect_timeout_s * 1000));
    SETOPT(CURLOPT_NOPROGRESS, 0L);
    SETOPT(CURLOPT_XFERINFOFUNCTION, on_progress);
    SETOPT(CURLOPT_XFERINFODATA, r);
    SETOPT(CURLOPT_LOW_SPEED_LIMIT, 1L); /* a backstop: averaged, so slower than on_progress */
    SETOPT(CURLOPT_LOW_SPEED_TIME, (long)ceil(s3->stall_timeout_s) + 5);
    SETOPT(CURLOPT_SSL_VERIFYPEER, s3->verify_tls ? 1L : 0L);
    SETOPT(CURLOPT_SSL_VERIFYHOST, s3->verify_tls ? 2L : 0L);
    if (s3->ca_file) SETOPT(CURLOPT_CAINFO, s3->ca_file);
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    if (!strcmp(r->method, "HEAD")) {
        SETOPT(CURLOPT_NOBODY, 1L);
    } else if (!strcmp(r->method, "PUT")) {
        SETOPT(CURLOPT_UPLOAD, 1L);
        SETOPT(CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
        SETOPT(CURLOPT_READFUNCTION, on_read);
        SETOPT(CURLOPT_READDATA, r);
        SETOPT(CURLOPT_SEEKFUNCTION, on_seek);
        SETOPT(CURLOPT_SEEKDATA, r);
    } else if (!strcmp(r->method, "POST")) {
        SETOPT(CURLOPT_POST, 1L);
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        SETOPT(CURLOPT_READFUNCTION, on_read);
        SETOPT(CURLOPT_READDATA, r);
        SETOPT(CURLOPT_SEEKFUNCTION, on_seek);
        SETOPT(CURLOPT_SEEKDATA, r);
    } else if (strcmp(r->method, "GET") != 0) {
        SETOPT(CURLOPT_CUSTOMREQUEST, r->method);
    }
    if (!ok) return dc_error(DC_ERR_INTERNAL, "curl_easy_setopt failed");
    CURLMcode mc = curl_multi_add_handle(s3->multi, e);
    if (mc != CURLM_OK) return dc_error(DC_ERR_IO, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
    s3->active++;
    stat_add(&s3->requests, 1);
    return DC_OK;
}

static void finish(dc_s3 *s3, s3_req *r)
{
    pthread_mutex_lock(&s3->mu);
    r->done = 1;
    r->batch->pending--;
    pthread_cond_broadcast(&r->batch->cv);
    pthread_mutex_unlock(&s3->mu);
}

static int retryable_code(const char *c)
{
    static const char *const codes[] = { "SlowDown",
                                         "Throttling",
                                         "ThrottlingException",
                                         "RequestTimeout",
                                         "InternalError",
                                         "ServiceUnavailable",
                                         "RequestThrottled",
                                         "TooManyRequestsException",
                                         "RequestLimitExceeded",
                                         "ProvisionedThroughputExceededException",
                                         "BandwidthLimitExceeded",
                                         "RequestTimeoutException",
                                         "PriorRequestNotComplete",
                                         "EC2ThrottledException" };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (!strcmp(c, codes[i])) return 1;
    return 0;
}

static int retryable_curl(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP3: return 1;
    default: return 0;
    }
}

static const char *reason(long status)
{
    switch (status) {
    case 200: return "OK";
    case 301: return "Moved Permanently";
    case 307: return "Temporary Redirect";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 412: return "Precondition Failed";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "HTTP error";
    }
}

/* One attempt finished: done, or retried after a backoff. */
static void attempt_done(dc_s3 *s3, s3_req *r, CURLcode cc)
{
    curl_multi_remove_handle(s3->multi, r->easy);
    s3->active--;
    long nconn = 0;
    curl_off_t up = 0;
    if (curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &nconn) == CURLE_OK) stat_add(&s3->connections, nconn);
    if (curl_easy_getinfo(r->easy, CURLINFO_SIZE_UPLOAD_T, &up) == CURLE_OK) stat_add(&s3->bytes_out, up);
    r->attempts++;

    int retry = 0;
    char what[600] = "";
    dc_s3_error err = { 0 };
    int ok_transfer = cc == CURLE_OK || (cc == CURLE_WRITE_ERROR && r->enough);
    if (r->bad_range) {
        snprintf(what, sizeof what, "%ld with Content-Range bytes %lld-%lld, not the range asked for (from %lld)",
                 r->status, (long long)r->cr_start, (long long)r->cr_end, (long long)(r->range_off + r->got));
        err.http_status = (int)r->status;
    } else if (!ok_transfer && r->stalled) {
        snprintf(what, sizeof what, "stalled: nothing received for %.1f s", s3->stall_timeout_s);
        err.curl_code = CURLE_OPERATION_TIMEDOUT;
        retry = 1;
    } else if (!ok_transfer) {
        const char *detail = r->errbuf[0] ? r->errbuf : curl_easy_strerror(cc);
        snprintf(what, sizeof what, "curl error %d (%s)", (int)cc, detail);
        err.curl_code = (int)cc;
        retry = retryable_curl(cc) || r->status >= 500;
    } else if (is_2xx(r->status)) {
        int truncated = 0;
        int64_t expect = -1, have = 0;
        if (r->range_len >= 0 && r->status == 206) {
            if (r->cr_start < 0) {
                snprintf(what, sizeof what, "206 without a Content-Range");
                err.http_status = 206;
            } else {
                r->total = r->cr_total;
                /* nothing came (an empty tail) counts as truncated too, unless the range was empty */
                int64_t pos = r->resp_pos < 0 ? r->cr_start : r->resp_pos;
                expect = r->cr_end + 1 - r->cr_start;
                have = pos - r->cr_start;
                truncated = pos < r->cr_end + 1;
            }
        } else if (r->range_len >= 0) { /* 200 to a range request: the whole object */
            int64_t pos = r->resp_pos < 0 ? 0 : r->resp_pos;
            r->total = r->content_length >= 0 ? r->content_length : pos;
            expect = r->total;
            have = pos;
            truncated = !r->enough && pos < r->total;
        } else if (strcmp(r->method, "HEAD") != 0 && r->content_length >= 0) {
            expect = r->content_length;
            have = r->attempt_bytes;
            truncated = have != expect;
        }
        if (!what[0] && truncated) {
            snprintf(what, sizeof what, "truncated body: %lld of %lld bytes", (long long)have, (long long)expect);
            err.http_status = (int)r->status;
            err.curl_code = CURLE_PARTIAL_FILE;
            retry = 1;
        } else if (!what[0] && r->check_body_error && r->grow.data && strstr(r->grow.data, "<Error>")) {
            const char *s = r->grow.data, *end = s + r->grow.len;
            char msg[300] = "";
            s3_xml_get(s, end, "Code", err.code, sizeof err.code);
            s3_xml_get(s, end, "Message", msg, sizeof msg);
            snprintf(what, sizeof what, "200 %s: %s", err.code, msg);
            err.http_status = 200;
            retry = retryable_code(err.code);
        }
        if (!what[0] && strcmp(r->method, "HEAD") == 0) r->total = r->content_length;
    } else {
        const char *s = r->errbody.data, *end = s ? s + r->errbody.len : NULL;
        char msg[300] = "";
        if (s) {
            s3_xml_get(s, end, "Code", err.code, sizeof err.code);
            s3_xml_get(s, end, "Message", msg, sizeof msg);
        }
        if (!err.code[0] && r->status == 404 && !strcmp(r->method, "HEAD"))
            snprintf(err.code, sizeof err.code, "NoSuchKey");
        if (r->status == 416 && r->cr_total >= 0) r->total = r->cr_total;
        err.http_status = (int)r->status;
        if (err.code[0])
            snprintf(what, sizeof what, "%ld %s: %s", r->status, err.code, msg[0] ? msg : reason(r->status));
        else
            snprintf(what, sizeof what, "%ld %s", r->status, reason(r->status));
        retry = r->status == 500 || r->status == 502 || r->status == 503 || r->status == 504 || r->status == 429 ||
                retryable_code(err.code);
    }

    if (what[0] && retry && r->attempts < s3->max_attempts) {
        double cap = s3->backoff_base_s * pow(2.0, r->attempts - 1);
        if (cap > s3->backoff_cap_s) cap = s3->backoff_cap_s;
        r->retry_at = now_s() + rand01(s3) * cap;
        r->next = s3->delayed;
        s3->delayed = r;
        stat_add(&s3->retries, 1);
        return;
    }
    if (what[0]) {
        err.attempts = r->attempts;
        r->err = err;
        r->st = DC_ERR_IO;
        if (r->attempts > 1)
            snprintf(r->msg, sizeof r->msg, "S3 %s %.300s: %.600s (after %d attempts)", r->verb, r->where, what,
                     r->attempts);
        else
            snprintf(r->msg, sizeof r->msg, "S3 %s %.300s: %.600s", r->verb, r->where, what);
    }
    finish(s3, r);
}

static void start_ready(dc_s3 *s3)
{
    while (s3->ready_head && s3->active < s3->max_connections) {
        s3_req *r = s3->ready_head;
        s3->ready_head = r->next;
        if (!s3->ready_head) s3->ready_tail = NULL;
        r->next = NULL;
        dc_status st = attempt_start(s3, r);
        if (st) {
            r->st = st;
            r->err.attempts = r->attempts;
            snprintf(r->msg, sizeof r->msg, "S3 %s %.300s: %s", r->verb, r->where, dc_last_error());
            finish(s3, r);
        }
    }
}

static void push_ready(dc_s3 *s3, s3_req *r)
{
    r->next = NULL;
    if (s3->ready_tail)
        s3->ready_tail->next = r;
    else
        s3->ready_head = r;
    s3->ready_tail = r;
}

static void *engine_main(void *arg)
{
    dc_s3 *s3 = arg;
    pthread_mutex_lock(&s3->mu);
    for (;;) {
        s3_req *in = s3->in_head;
        s3->in_head = s3->in_tail = NULL;
        int stop = s3->stop;
        pthread_mutex_unlock(&s3->mu);
        if (stop) break; /* dc_s3_free: every call has returned, nothing is in flight */
        while (in) {
            s3_req *nx = in->next;
            push_ready(s3, in);
            in = nx;
        }
        double now = now_s(), next_due = now + 1.0;
        for (s3_req **pp = &s3->delayed; *pp;) {
            s3_req *r = *pp;
            if (r->retry_at <= now) {
                *pp = r->next;
                push_ready(s3, r);
            } else {
                if (r->retry_at < next_due) next_due = r->retry_at;
                pp = &r->next;
            }
        }
        start_ready(s3);
        int running = 0;
        curl_multi_perform(s3->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(s3->multi, &left))) {
            if (m->msg != CURLMSG_DONE) continue;
            s3_req *r = NULL;
            CURLcode res = m->data.result;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
            attempt_done(s3, r, res);
        }
        /* retries scheduled just now are due soon: wake for the earliest */
        for (s3_req *r = s3->delayed; r; r = r->next)
            if (r->retry_at < next_due) next_due = r->retry_at;
        int timeout_ms = (int)((next_due - now_s()) * 1000);
        if (timeout_ms < 0) timeout_ms = 0;
        if (timeout_ms > 1000) timeout_ms = 1000;
        if (s3->ready_head && s3->active < s3->max_connections) timeout_ms = 0;
        curl_multi_poll(s3->multi, NULL, 0, timeout_ms, NULL);
        pthread_mutex_lock(&s3->mu);
    }
    return NULL;
}

/* Queue requests (all on one batch); starts the engine on first use (again in a forked child).
 * On failure none was queued. */
static dc_status submit(dc_s3 *s3, s3_req **rs, int n, s3_batch *b)
{
    pthread_mutex_lock(&s3->mu);
    if (!s3->running) {
        CURLM *m = curl_multi_init();
        if (!m) {
            pthread_mutex_unlock(&s3->mu);
            return dc_error(DC_ERR_NOMEM, "S3: curl_multi_init failed");
        }
        curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)s3->max_connections);
        curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)s3->max_connections);
        s3->multi = m;
        s3->stop = 0;
        int rc = pthread_create(&s3->thread, NULL, engine_main, s3);
        if (rc) {
            s3->multi = NULL;
            pthread_mutex_unlock(&s3->mu);
            curl_multi_cleanup(m);
            return dc_error(DC_ERR_IO, "S3: cannot start the transfer thread: %s", strerror(rc));
        }
        s3->running = 1;
    }
    for (int i = 0; i < n; i++) {
        rs[i]->batch = b;
        rs[i]->done = 0;
        rs[i]->next = NULL;
        b->pending++;
        if (s3->in_tail)
            s3->in_tail->next = rs[i];
        else
            s3->in_head = rs[i];
        s3->in_tail = rs[i];
    }
    curl_multi_wakeup(s3->multi);
    pthread_mutex_unlock(&s3->mu);
    return DC_OK;
}

static void batch_init(s3_batch *b)
{
    pthread_cond_init(&b->cv, NULL);
    b->pending = 0;
}

/* Wait until at most `until` requests of the batch are unfinished. */
static void batch_wait(dc_s3 *s3, s3_batch *b, int until)
{
    pthread_mutex_lock(&s3->mu);
    while (b->pending > until) pthread_cond_wait(&b->cv, &s3->mu);
    pthread_mutex_unlock(&s3->mu);
}

/* A finished request's failure into this thread's error buffer and last error. */
static dc_status req_status(const s3_req *r)
{
    if (!r->st) return DC_OK;
    tl_err = r->err;
    return dc_error(r->st, "%s", r->msg);
}

/* Run one request to its end. */
static dc_status run(dc_s3 *s3, s3_req *r)
{
    s3_batch b;
    batch_init(&b);
    dc_status st = submit(s3, &r, 1, &b);
    if (!st) {
        batch_wait(s3, &b, 0);
        st = req_status(r);
    }
    pthread_cond_destroy(&b.cv);
    return st;
}

static dc_status check_args(dc_s3 *s3, const char *bucket, const char *key, const char *fn)
{
    if (!s3) return dc_error(DC_ERR_VALUE, "%s: the client is NULL", fn);
    if (!bucket || !*bucket) return dc_error(DC_ERR_VALUE, "%s: a bucket name is required", fn);
    if (key && !*key) return dc_error(DC_ERR_VALUE, "%s: s3://%s/: an object key is required", fn, bucket);
    return DC_OK;
}

/* --- objects ------------------------------------------------------------------------------------ */

dc_status dc_s3_head(dc_s3 *s3, const char *bucket, const char *key, int64_t *size, char *etag_buf, size_t etag_cap)
{
    DC_TRY(check_args(s3, bucket, key ? key : "", "dc_s3_head"));
    s3_req *r = req_new(s3, "HEAD", "HEAD", bucket, key, NULL, 0);
    if (!r) return DC_ERR_NOMEM;
    dc_status st = run(s3, r);
    if (!st) {
        if (size) *size = r->total;
        if (etag_buf && etag_cap) snprintf(etag_buf, etag_cap, "%s", r->etag);
    }
    req_free(r);
    return st;
}

static dc_status past_end(dc_s3 *s3, const char *bucket, const char *key, int64_t off, int64_t len, int64_t total)
{
    if (total < 0) {
        dc_s3_error saved = tl_err;
        if (dc_s3_head(s3, bucket, key, &total, NULL, 0)) total = -1;
        tl_err = saved;
    }
    tl_err.http_status = 416;
    snprintf(tl_err.code, sizeof tl_err.code, "InvalidRange");
    tl_err.curl_code = 0;
    if (total >= 0)
        return dc_error(DC_ERR_IO, "S3 GET s3://%s/%s: range [%lld, %lld) is past the end of the object (size %lld)",
                        bucket, key, (long long)off, (long long)(off + len), (long long)total);
    return dc_error(DC_ERR_IO, "S3 GET s3://%s/%s: range [%lld, %lld) is past the end of the object", bucket, key,
                    (long long)off, (long long)(off + len));
}

dc_status dc_s3_get_range(dc_s3 *s3, const char *bucket, const char *key, int64_t offset, int64_t length, void *dst,
                          int64_t *object_size)
{
    DC_TRY(check_args(s3, bucket, key ? key : "", "dc_s3_get_range"));
    if (offset < 0 || length < 0 || (length > 0 && !dst))
        return dc_error(DC_ERR_VALUE,
                        "dc_s3_get_range: s3://%s/%s: offset %lld and length %lld must be >= 0 (and dst "
                        "set)",
                        bucket, key, (long long)offset, (long long)length);
    if (length == 0) { /* an empty range has no Range header: ask for the size */
        int64_t total;
        DC_TRY(dc_s3_head(s3, bucket, key, &total, NULL, 0));
        if (offset > total) return past_end(s3, bucket, key, offset, length, total);
        if (object_size) *object_size = total;
        return DC_OK;
    }
    s3_req *r = req_new(s3, "GET", "GET", bucket, key, NULL, 0);
    if (!r) return DC_ERR_NOMEM;
    r->sink = SINK_FIXED;
    r->dst = dst;
    r->range_off = offset;
    r->range_len = length;
    dc_status st = run(s3, r);
    if (st && r->err.http_status == 416) {
        int64_t total = r->total;
        req_free(r);
        return past_end(s3, bucket, key, offset, length, total);
    }
    if (!st && r->got != length) st = past_end(s3, bucket, key, offset, length, r->total);
    if (!st && object_size) *object_size = r->total;
    req_free(r);
    return st;
}

dc_status dc_s3_get(dc_s3 *s3, const char *bucket, const char *key, int64_t part_size, void **data, int64_t *size)
{
    DC_TRY(check_args(s3, bucket, key ? key : "", "dc_s3_get"));
    if (!data || !size) return dc_error(DC_ERR_VALUE, "dc_s3_get: data and size are required");
    *data = NULL;
    *size = 0;
    if (part_size <= 0) part_size = DEFAULT_GET_PART;
    /* the first part tells the size (Content-Range); a server ignoring Range sends it all */
    s3_req *first = req_new(s3, "GET", "GET", bucket, key, NULL, 0);
    if (!first) return DC_ERR_NOMEM;
    first->sink = SINK_GROW;
    first->range_off = 0;
    first->range_len = part_size;
    dc_status st = run(s3, first);
    if (st && first->err.http_status == 416) { /* an empty object has no byte 0 */
        dc_s3_error saved = tl_err;
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", dc_last_error());
        int64_t total = -1;
        if (dc_s3_head(s3, bucket, key, &total, NULL, 0) == DC_OK && total == 0) {
            req_free(first);
            *data = malloc(1);
            if (!*data) return dc_error(DC_ERR_NOMEM, "S3 GET s3://%s/%s: out of memory", bucket, key);
            return DC_OK;
        }
        tl_err = saved;
        st = dc_error(DC_ERR_IO, "%s", msg);
    }
    if (st) {
        req_free(first);
        return st;
    }
    int64_t total = first->total >= 0 ? first->total : first->got;
    if (first->got >= total) {
        *size = first->got;
        *data = first->grow.data ? first->grow.data : malloc(1);
        first->grow.data = NULL;
        req_free(first);
        if (!*data) return dc_error(DC_ERR_NOMEM, "S3 GET s3://%s/%s: out of memory", bucket, key);
        return DC_OK;
    }
    char *buf = malloc((size_t)total);
    if (!buf) {
        req_free(first);
        return dc_error(DC_ERR_NOMEM, "S3 GET s3://%s/%s: cannot allocate %lld bytes", bucket, key, (long long)total);
    }
    memcpy(buf, first->grow.data, (size_t)first->got);
    int64_t start = first->got;
    int64_t nparts = (total - start + part_size - 1) / part_size;
    s3_req **rs = calloc((size_t)nparts, sizeof *rs);
    if (!rs) {
        free(buf);
        req_free(first);
        return dc_error(DC_ERR_NOMEM, "S3: out of memory");
    }
    for (int64_t i = 0; i < nparts && !st; i++) {
        if (!(rs[i] = req_new(s3, "GET", "GET", bucket, key, NULL, 0))) {
            st = DC_ERR_NOMEM;
            break;
        }
        rs[i]->sink = SINK_FIXED;
        rs[i]->range_off = start + i * part_size;
        rs[i]->range_len = total - rs[i]->range_off < part_size ? total - rs[i]->range_off : part_size;
        rs[i]->dst = buf + rs[i]->range_off;
        /* every part from the same version of the object */
        if (first->etag[0] && !(rs[i]->if_match = strdup(first->etag)))
            st = dc_error(DC_ERR_NOMEM, "S3: out of memory");
    }
    if (!st) {
        s3_batch b;
        batch_init(&b);
        st = submit(s3, rs, (int)nparts, &b);
        if (!st) {
            batch_wait(s3, &b, 0);
            for (int64_t i = 0; i < nparts && !st; i++) {
                st = req_status(rs[i]);
                if (!st && rs[i]->got != rs[i]->range_len)
                    st = dc_error(DC_ERR_IO,
                                  "S3 GET s3://%s/%s: the object shrank while it was read (%lld bytes "
                                  "at %lld)",
                                  bucket, key, (long long)rs[i]->got, (long long)rs[i]->range_off);
            }
        }
        pthread_cond_destroy(&b.cv);
    }
    for (int64_t i = 0; i < nparts; i++) req_free(rs[i]);
    free(rs);
    req_free(first);
    if (st) {
        free(buf);
        return st;
    }
    *data = buf;
    *size = total;
    return DC_OK;
}

dc_status dc_s3_put(dc_s3 *s3, const char *bucket, const char *key, const void *data, size_t len)
{
    DC_TRY(check_args(s3, bucket, key ? key : "", "dc_s3_put"));
    if (len && !data) return dc_error(DC_ERR_VALUE, "dc_s3_put: data is NULL");
    if ((long long)len > MAX_SINGLE_PUT)
        return dc_error(DC_ERR_VALUE, "S3 PUT s3://%s/%s: %zu bytes is over the 5 GiB of one PUT: use an upload",
                        bucket, key, len);
    s3_req *r = req_new(s3, "PUT", "PUT", bucket, key, NULL, 0);
    if (!r) return DC_ERR_NOMEM;
    r->body = data;
    r->body_len = len;
    s3_sha256_hex(data ? data : "", len, r->payload_hash);
    dc_status st = run(s3, r);
    req_free(r);
    return st;
}

dc_status dc_s3_delete(dc_s3 *s3, const char *bucket, const char *key)
{
    DC_TRY(check_args(s3, bucket, key ? key : "", "dc_s3_delete"));
    s3_req *r = req_new(s3, "DELETE", "DELETE", bucket, key, NULL, 0);
    if (!r) return DC_ERR_NOMEM;
    dc_status st = run(s3, r);
    req_free(r);
    return st;
}

/* --- listing ------------------------------------------------------------------------------------ */

void dc_s3_list_page_clear(dc_s3_list_page *p)
{
    if (!p) return;
    for (int i = 0; i < p->n; i++) free(p->keys[i]);
    for (int i = 0; i < p->nprefixes; i++) free(p->prefixes[i]);
    free(p->keys);
    free(p->sizes);
    free(p->prefixes);
    free(p->next_token);
    memset(p, 0, sizeof *p);
}

static int count_tag(const char *s, const char *end, const char *tag)
{
    int n = 0;
    const char *a, *b, *after;
    while (s3_xml_find(s, end, tag, &a, &b, &after)) {
        n++;
        s = after;
    }
    return n;
}

static dc_status parse_list(const char *s, const char *end, dc_s3_list_page *out, const char *where)
{
    int nc = count_tag(s, end, "Contents"), np = count_tag(s, end, "CommonPrefixes");
    out->keys = calloc((size_t)nc + 1, sizeof *out->keys);
    out->sizes = calloc((size_t)nc + 1, sizeof *out->sizes);
    out->prefixes = calloc((size_t)np + 1, sizeof *out->prefixes);
    if (!out->keys || !out->sizes || !out->prefixes) return dc_error(DC_ERR_NOMEM, "S3: out of memory");
    const char *p = s, *a, *b, *after;
    while (out->n < nc && s3_xml_find(p, end, "Contents", &a, &b, &after)) {
        const char *ka, *kb, *sa, *sb;
        if (!s3_xml_find(a, b, "Key", &ka, &kb, NULL))
            return dc_error(DC_ERR_IO, "S3 LIST %s: a <Contents> entry without <Key>", where);
        if (!(out->keys[out->n] = s3_xml_text(ka, kb))) return dc_error(DC_ERR_NOMEM, "S3: out of memory");
        out->sizes[out->n] = s3_xml_find(a, b, "Size", &sa, &sb, NULL) ? strtoll(sa, NULL, 10) : -1;
        out->n++;
        p = after;
    }
    p = s;
    while (out->nprefixes < np && s3_xml_find(p, end, "CommonPrefixes", &a, &b, &after)) {
        const char *ka, *kb;
        if (s3_xml_find(a, b, "Prefix", &ka, &kb, NULL)) {
            if (!(out->prefixes[out->nprefixes] = s3_xml_text(ka, kb)))
                return dc_error(DC_ERR_NOMEM, "S3: out of memory");
            out->nprefixes++;
        }
        p = after;
    }
    /* keys are text inside <Key>, so a key named "IsTruncated" cannot be mistaken for the element */
    char trunc[16] = "";
    s3_xml_get(s, end, "IsTruncated", trunc, sizeof trunc);
    if (!strcmp(trunc, "true")) {
        if (!s3_xml_find(s, end, "NextContinuationToken", &a, &b, NULL))
            return dc_error(DC_ERR_IO, "S3 LIST %s: IsTruncated without a NextContinuationToken", where);
        if (!(out->next_token = s3_xml_text(a, b))) return dc_error(DC_ERR_NOMEM, "S3: out of memory");
    }
    return DC_OK;
}

dc_status dc_s3_list(dc_s3 *s3, const char *bucket, const char *prefix, const char *delimiter, const char *token,
                     int max_keys, dc_s3_list_page *out)
{
    DC_TRY(check_args(s3, bucket, NULL, "dc_s3_list"));
    if (!out) return dc_error(DC_ERR_VALUE, "dc_s3_list: out is NULL");
    memset(out, 0, sizeof *out);
    char mk[32];
    snprintf(mk, sizeof mk, "%d", max_keys > 0 ? max_keys : 1000);
    s3_param ps[5];
    int np = 0;
    ps[np++] = (s3_param){ "list-type", "2" };
    ps[np++] = (s3_param){ "max-keys", mk };
    if (prefix && *prefix) ps[np++] = (s3_param){ "prefix", prefix };
    if (delimiter && *delimiter) ps[np++] = (s3_param){ "delimiter", delimiter };
    if (token && *token) ps[np++] = (s3_param){ "continuation-token", token };
    s3_req *r = req_new(s3, "LIST", "GET", bucket, NULL, ps, np);
    if (!r) return DC_ERR_NOMEM;
    free(r->where);
    size_t wl = strlen(bucket) + (prefix ? strlen(prefix) : 0) + 8;
    if ((r->where = malloc(wl))) snprintf(r->where, wl, "s3://%s/%s", bucket, prefix ? prefix : "");
    if (!r->where) {
        req_free(r);
        return dc_error(DC_ERR_NOMEM, "S3: out of memory");
    }
    dc_status st = run(s3, r);
    if (!st) {
        const char *s = r->grow.data ? r->grow.data : "";
        st = parse_list(s, s + r->grow.len, out, r->where);
        if (st) dc_s3_list_page_clear(out);
    }
    req_free(r);
    return st;
}

/* --- multipart upload --------------------------------------------------------------------------- */

typedef struct {
    s3_req *req; /* NULL once harvested */
    char *buf;
    char etag[160];
} up_part;

struct dc_s3_upload {
    dc_s3 *s3;
    char *bucket, *key;
    int64_t part_size;
    int max_inflight;
    char *upload_id; /* NULL until the first full part */
    char *cur;       /* the part being filled (part_size bytes) */
    size_t cur_len;
    up_part *parts;
    int nparts, cap;
    s3_batch batch;
    dc_status failed; /* the first failure; later calls repeat it */
    char failmsg[1024];
    dc_s3_error failerr;
};

static dc_status up_fail(dc_s3_upload *up, dc_status st)
{
    if (!up->failed) {
        up->failed = st;
        snprintf(up->failmsg, sizeof up->failmsg, "%s", dc_last_error());
        up->failerr = tl_err;
    }
    return st;
}

static dc_status up_repeat(dc_s3_upload *up)
{
    tl_err = up->failerr;
    return dc_error(up->failed, "%s", up->failmsg);
}

dc_status dc_s3_upload_init(dc_s3 *s3, const char *bucket, const char *key, int64_t part_size, int max_inflight,
                            dc_s3_upload **out)
{
    DC_TRY(check_args(s3, bucket, key ? key : "", "dc_s3_upload_init"));
    if (!out) return dc_error(DC_ERR_VALUE, "dc_s3_upload_init: out is NULL");
    *out = NULL;
    if (part_size <= 0) part_size = DEFAULT_UP_PART;
    if (part_size < MIN_PART || part_size > MAX_SINGLE_PUT)
        return dc_error(DC_ERR_VALUE, "S3 upload s3://%s/%s: part_size %lld must be between 5 MiB and 5 GiB", bucket,
                        key, (long long)part_size);
    dc_s3_upload *up = calloc(1, sizeof *up);
    if (!up) return dc_error(DC_ERR_NOMEM, "S3: out of memory");
    up->s3 = s3;
    up->bucket = strdup(bucket);
    up->key = strdup(key);
    up->part_size = part_size;
    up->max_inflight = max_inflight > 0 ? max_inflight : 4;
    batch_init(&up->batch);
    if (!up->bucket || !up->key) {
        dc_s3_upload_abort(up);
        return dc_error(DC_ERR_NOMEM, "S3: out of memory");
    }
    *out = up;
    return DC_OK;
}

static dc_status up_create(dc_s3_upload *up)
{
    s3_param p = { "uploads", NULL };
    s3_req *r = req_new(up->s3, "POST", "POST", up->bucket, up->key, &p, 1);
    if (!r) return DC_ERR_NOMEM;
    r->check_body_error = 1;
    dc_status st = run(up->s3, r);
    if (!st) {
        const char *s = r->grow.data ? r->grow.data : "", *a, *b;
        if (!s3_xml_find(s, s + r->grow.len, "UploadId", &a, &b, NULL) || a == b)
            st = dc_error(DC_ERR_IO, "S3 POST s3://%s/%s: CreateMultipartUpload answered without an UploadId",
                          up->bucket, up->key);
        else if (!(up->upload_id = s3_xml_text(a, b)))
            st = dc_error(DC_ERR_NOMEM, "S3: out of memory");
    }
    req_free(r);
    return st;
}

static void upload_abort_remote(dc_s3_upload *up);

static dc_status up_send_part(dc_s3_upload *up)
{
    if (up->nparts >= MAX_PARTS)
        return dc_error(DC_ERR_VALUE, "S3 upload s3://%s/%s: more than %d parts of %lld bytes: use a larger part_size",
                        up->bucket, up->key, MAX_PARTS, (long long)up->part_size);
    if (!up->upload_id) DC_TRY(up_create(up));
    if (up->nparts == up->cap) {
        int cap = up->cap ? up->cap * 2 : 16;
        up_part *np = realloc(up->parts, (size_t)cap * sizeof *np);
        if (!np) return dc_error(DC_ERR_NOMEM, "S3: out of memory");
        up->parts = np;
        up->cap = cap;
    }
    char num[16];
    snprintf(num, sizeof num, "%d", up->nparts + 1);
    s3_param ps[2] = { { "partNumber", num }, { "uploadId", up->upload_id } };
    s3_req *r = req_new(up->s3, "PUT", "PUT", up->bucket, up->key, ps, 2);
    if (!r) return DC_ERR_NOMEM;
    r->body = up->cur;
    r->body_len = up->cur_len;
    s3_sha256_hex(up->cur, up->cur_len, r->payload_hash); /* in the writer's thread, not the engine's */
    up_part *p = &up->parts[up->nparts];
    p->req = r;
    p->buf = up->cur;
    p->etag[0] = '\0';
    up->nparts++;
    up->cur = NULL;
    up->cur_len = 0;
    /* bounded in flight: wait for a slot first */
    batch_wait(up->s3, &up->batch, up->max_inflight - 1);
    dc_status st = submit(up->s3, &r, 1, &up->batch);
    if (st) {
        p->req = NULL;
        req_free(r);
    }
    return st;
}

/* Harvest finished parts: keep their ETags, free their buffers; the first failure. */
static dc_status up_collect(dc_s3_upload *up)
{
    dc_status st = DC_OK;
    for (int i = 0; i < up->nparts; i++) {
        up_part *p = &up->parts[i];
        if (!p->req) continue;
        pthread_mutex_lock(&up->s3->mu);
        int done = p->req->done;
        pthread_mutex_unlock(&up->s3->mu);
        if (!done) continue;
        if (!st) {
            st = req_status(p->req);
            if (!st && !p->req->etag[0])
                st = dc_error(DC_ERR_IO, "S3 PUT s3://%s/%s: part %d answered without an ETag", up->bucket, up->key,
                              i + 1);
        }
        snprintf(p->etag, sizeof p->etag, "%s", p->req->etag);
        req_free(p->req);
        p->req = NULL;
        free(p->buf);
        p->buf = NULL;
    }
    return st;
}

dc_status dc_s3_upload_write(dc_s3_upload *up, const void *data, size_t len)
{
    if (!up) return dc_error(DC_ERR_VALUE, "dc_s3_upload_write: upload is NULL");
    if (up->failed) return up_repeat(up);
    const char *src = data;
    while (len) {
        if (!up->cur && !(up->cur = malloc((size_t)up->part_size)))
            return up_fail(up, dc_error(DC_ERR_NOMEM, "S3 upload s3://%s/%s: cannot allocate a part of %lld bytes",
                                        up->bucket, up->key, (long long)up->part_size));
        size_t room = (size_t)up->part_size - up->cur_len, n = len < room ? len : room;
        memcpy(up->cur + up->cur_len, src, n);
        up->cur_len += n;
        src += n;
        len -= n;
        if (up->cur_len == (size_t)up->part_size) {
            dc_status st = up_send_part(up);
            if (!st) st = up_collect(up);
            if (st) {
                up_fail(up, st);
                upload_abort_remote(up);
                return up_repeat(up);
            }
        }
    }
    return DC_OK;
}

/* Wait for the parts in flight, then AbortMultipartUpload (retried like any request): no part is
 * left behind to be billed. Keeps the upload's first failure. */
static void upload_abort_remote(dc_s3_upload *up)
{
    batch_wait(up->s3, &up->batch, 0);
    dc_s3_error saved = tl_err;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", dc_last_error());
    up_collect(up);
    if (up->upload_id) {
        s3_param p = { "uploadId", up->upload_id };
        s3_req *r = req_new(up->s3, "DELETE", "DELETE", up->bucket, up->key, &p, 1);
        if (r) {
            run(up->s3, r);
            req_free(r);
        }
        free(up->upload_id);
        up->upload_id = NULL;
    }
    tl_err = saved;
    dc_error(DC_ERR_IO, "%s", msg);
}

static void upload_free(dc_s3_upload *up)
{
    for (int i = 0; i < up->nparts; i++) {
        req_free(up->parts[i].req);
        free(up->parts[i].buf);
    }
    free(up->parts);
    free(up->cur);
    free(up->upload_id);
    free(up->bucket);
    free(up->key);
    pthread_cond_destroy(&up->batch.cv);
    free(up);
}

static int xml_escape(s3_buf *b, const char *s)
{
    int oom = 0;
    for (; *s; s++) {
        switch (*s) {
        case '&': oom |= s3_buf_append(b, "&amp;", 5); break;
        case '<': oom |= s3_buf_append(b, "&lt;", 4); break;
        case '>': oom |= s3_buf_append(b, "&gt;", 4); break;
        case '"': oom |= s3_buf_append(b, "&quot;", 6); break;
        default: oom |= s3_buf_append(b, s, 1);
        }
    }
    return oom;
}

static dc_status up_complete(dc_s3_upload *up)
{
    s3_buf body = { 0 };
    int oom = s3_buf_appendf(&body, "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (int i = 0; i < up->nparts; i++) {
        oom |= s3_buf_appendf(&body, "<Part><PartNumber>%d</PartNumber><ETag>", i + 1);
        oom |= xml_escape(&body, up->parts[i].etag);
        oom |= s3_buf_appendf(&body, "</ETag></Part>");
    }
    oom |= s3_buf_appendf(&body, "</CompleteMultipartUpload>");
    s3_param p = { "uploadId", up->upload_id };
    s3_req *r = oom ? NULL : req_new(up->s3, "POST", "POST", up->bucket, up->key, &p, 1);
    if (!r) {
        s3_buf_free(&body);
        return dc_error(DC_ERR_NOMEM, "S3: out of memory");
    }
    r->body = body.data;
    r->body_len = body.len;
    r->content_type = "application/xml";
    r->check_body_error = 1; /* a 200 can still carry an <Error> */
    s3_sha256_hex(body.data, body.len, r->payload_hash);
    dc_status st = run(up->s3, r);
    req_free(r);
    s3_buf_free(&body);
    return st;
}

dc_status dc_s3_upload_finish(dc_s3_upload *up)
{
    if (!up) return dc_error(DC_ERR_VALUE, "dc_s3_upload_finish: upload is NULL");
    dc_status st = DC_OK;
    if (up->failed) {
        st = up_repeat(up);
    } else if (!up->upload_id) { /* smaller than one part: one PUT */
        st = dc_s3_put(up->s3, up->bucket, up->key, up->cur ? up->cur : "", up->cur_len);
    } else {
        if (up->cur_len) st = up_send_part(up);
        batch_wait(up->s3, &up->batch, 0);
        dc_status c = up_collect(up);
        if (!st) st = c;
        if (!st) st = up_complete(up);
        if (st) {
            up_fail(up, st);
            upload_abort_remote(up);
            st = up_repeat(up);
        } else {
            free(up->upload_id);
            up->upload_id = NULL;
        }
    }
    upload_free(up);
    return st;
}

void dc_s3_upload_abort(dc_s3_upload *up)
{
    if (!up) return;
    dc_s3_error saved = tl_err;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", dc_last_error());
    upload_abort_remote(up);
    upload_free(up);
    tl_err = saved;
    dc_error(DC_ERR_IO, "%s", msg); /* abort leaves the caller's last error as it was */
}
