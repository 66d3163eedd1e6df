/* test_s3_client.c: the S3 client in plain C against a live server (moto), for ASan/UBSan and
 * leak checks of csrc/s3 without Python: put, get (small and in parallel ranges), get_range, head,
 * list pages, delete, a multipart upload and an aborted one, errors, and free.
 *
 *   gcc -std=c11 -g -fsanitize=address,undefined -Icsrc tests/c/test_s3_client.c csrc/s3/*.c \
 *       csrc/core/status.c -lcurl -lcrypto -lpthread -lm -o build/test_s3_client
 *   ./build/test_s3_client http://127.0.0.1:PORT BUCKET     (the bucket must exist)
 *
 * tests/test_s3.py builds and runs it when gcc is found. Prints "ok" and exits 0 on success. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s3/s3.h"

#define CHECK(cond)                                                                                        \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #cond, dc_last_error()); \
            return 1;                                                                                      \
        }                                                                                                  \
    } while (0)

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (unsigned char)(seed >> 16);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s ENDPOINT BUCKET\n", argv[0]);
        return 2;
    }
    const char *bucket = argv[2];
    dc_s3_config cfg = dc_s3_config_default();
    cfg.endpoint = argv[1];
    cfg.access_key = "testing";
    cfg.secret_key = "testing-secret";
    cfg.path_style = 1;
    cfg.max_connections = 4;
    dc_s3 *s3;
    CHECK(dc_s3_init(&s3, &cfg) == DC_OK);

    size_t n = (3u << 20) + 12345;
    unsigned char *data = malloc(n);
    fill(data, n, 7);
    CHECK(dc_s3_put(s3, bucket, "c/blob bin+ü", data, n) == DC_OK);

    void *got;
    int64_t size;
    CHECK(dc_s3_get(s3, bucket, "c/blob bin+ü", 1 << 20, &got, &size) == DC_OK); /* 4 ranges */
    CHECK(size == (int64_t)n && memcmp(got, data, n) == 0);
    free(got);

    unsigned char part[1000];
    int64_t total = 0;
    CHECK(dc_s3_get_range(s3, bucket, "c/blob bin+ü", 1000000, sizeof part, part, &total) == DC_OK);
    CHECK(total == (int64_t)n && memcmp(part, data + 1000000, sizeof part) == 0);
    CHECK(dc_s3_get_range(s3, bucket, "c/blob bin+ü", (int64_t)n - 10, 100, part, NULL) == DC_ERR_IO);
    CHECK(strstr(dc_last_error(), "past the end") != NULL);

    char etag[128];
    CHECK(dc_s3_head(s3, bucket, "c/blob bin+ü", &size, etag, sizeof etag) == DC_OK);
    CHECK(size == (int64_t)n && etag[0]);
    CHECK(dc_s3_head(s3, bucket, "c/missing", &size, NULL, 0) == DC_ERR_IO);
    CHECK(dc_s3_last_error()->http_status == 404 && !strcmp(dc_s3_last_error()->code, "NoSuchKey"));
    CHECK(dc_s3_get(s3, bucket, "c/missing", 0, &got, &size) == DC_ERR_IO);
    CHECK(strstr(dc_last_error(), "NoSuchKey") && strstr(dc_last_error(), "s3://"));

    for (int i = 0; i < 5; i++) {
        char key[32];
        snprintf(key, sizeof key, "c/list/k%d&<", i);
        CHECK(dc_s3_put(s3, bucket, key, "x", 1) == DC_OK);
    }
    dc_s3_list_page page;
    char *token = NULL;
    int seen = 0, pages = 0;
    do {
        CHECK(dc_s3_list(s3, bucket, "c/list/", NULL, token, 2, &page) == DC_OK);
        free(token);
        token = page.next_token ? strdup(page.next_token) : NULL;
        for (int i = 0; i < page.n; i++) CHECK(strstr(page.keys[i], "&<") && page.sizes[i] == 1);
        seen += page.n;
        pages++;
        dc_s3_list_page_clear(&page);
    } while (token);
    CHECK(seen == 5 && pages == 3);
    CHECK(dc_s3_list(s3, bucket, "c/", "/", NULL, 0, &page) == DC_OK);
    CHECK(page.nprefixes == 1 && !strcmp(page.prefixes[0], "c/list/") && page.n == 1);
    dc_s3_list_page_clear(&page);

    /* multipart: 2 full parts of 5 MiB and a tail, written in odd-sized pieces */
    size_t mn = (11u << 20) + 777;
    unsigned char *big = malloc(mn);
    fill(big, mn, 11);
    dc_s3_upload *up;
    CHECK(dc_s3_upload_init(s3, bucket, "c/multi", 5 << 20, 2, &up) == DC_OK);
    for (size_t off = 0; off < mn; off += 1234567) {
        size_t k = mn - off < 1234567 ? mn - off : 1234567;
        CHECK(dc_s3_upload_write(up, big + off, k) == DC_OK);
    }
    CHECK(dc_s3_upload_finish(up) == DC_OK);
    CHECK(dc_s3_get(s3, bucket, "c/multi", 4 << 20, &got, &size) == DC_OK);
    CHECK(size == (int64_t)mn && memcmp(got, big, mn) == 0);
    free(got);
    /* a small upload is one PUT; an aborted one leaves nothing */
    CHECK(dc_s3_upload_init(s3, bucket, "c/small", 0, 0, &up) == DC_OK);
    CHECK(dc_s3_upload_write(up, "hello", 5) == DC_OK);
    CHECK(dc_s3_upload_finish(up) == DC_OK);
    CHECK(dc_s3_upload_init(s3, bucket, "c/aborted", 5 << 20, 0, &up) == DC_OK);
    CHECK(dc_s3_upload_write(up, big, mn) == DC_OK);
    dc_s3_upload_abort(up);
    CHECK(dc_s3_head(s3, bucket, "c/aborted", &size, NULL, 0) == DC_ERR_IO);

    CHECK(dc_s3_delete(s3, bucket, "c/blob bin+ü") == DC_OK);
    CHECK(dc_s3_head(s3, bucket, "c/blob bin+ü", &size, NULL, 0) == DC_ERR_IO);
    dc_s3_stats stats;
    dc_s3_get_stats(s3, &stats);
    CHECK(stats.requests > 10 && stats.bytes_in > (int64_t)n && stats.bytes_out > (int64_t)mn);
    CHECK(stats.connections >= 1 && stats.connections <= stats.requests);
    dc_s3_free(s3);
    dc_s3_free(NULL);
    free(data);
    free(big);
    printf("ok\n");
    return 0;
}
