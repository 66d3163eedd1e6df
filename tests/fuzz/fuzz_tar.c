/* fuzz_tar.c: libFuzzer harness for the streaming tar parser (csrc/loader/tar.c).
 *
 * The first 8 input bytes choose the chunk sizes (cycled) the rest is fed in, so the fuzzer also
 * explores chunk boundaries; every member is taken (or left to the parser), then the stream is
 * finished. A second parse of the same bytes fed at once must give the same members and status:
 * chunking may never change the result. A third restarts (dc_tar_reset) at the second member's
 * offset, as the pipeline does when it resumes a shard there: the same members after it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loader/shards.h"

typedef struct {
    int64_t n, sum, offsets, second;
    dc_status st;
} summary;

/* Parse data[start:] as the stream from offset `start` on. */
static summary run(const uint8_t *data, size_t size, size_t start, const uint8_t *chunks, size_t nchunks)
{
    summary s = { 0 };
    dc_tar *t;
    if (dc_tar_init(&t, 1 << 20) != DC_OK) abort();
    dc_tar_reset(t, 7); /* a reset of a fresh handle is harmless */
    dc_tar_reset(t, (int64_t)start);
    size_t pos = start, k = 0;
    for (;;) {
        size_t c = nchunks ? (size_t)chunks[k++ % nchunks] * 7 + 1 : size;
        if (c > size - pos) c = size - pos;
        dc_status st = dc_tar_feed(t, data + pos, c);
        if (st) {
            s.st = st;
            break;
        }
        pos += c;
        int have = 1;
        while (have) {
            dc_tar_member m;
            st = dc_tar_next(t, &m, &have);
            if (st) break;
            if (!have) break;
            if (m.name[m.name_len] != '\0') abort();
            if (s.n == 1) s.second = m.offset;
            s.n++;
            s.offsets += m.offset;
            for (int64_t i = 0; i < m.size; i += 97) s.sum += m.data[i];
            size_t key;
            const char *field;
            if (dc_wds_split(m.name, m.name_len, &key, &field) && (key > m.name_len || field < m.name)) abort();
            if (m.size % 2) free(dc_tar_take(t)); /* take some, leave the others to the parser */
        }
        if (st) {
            s.st = st;
            break;
        }
        if (pos == size) {
            s.st = dc_tar_finish(t);
            break;
        }
    }
    if (s.st == DC_OK && dc_tar_offset(t) != (int64_t)size) abort();
    dc_tar_free(t);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8) return 0;
    summary a = run(data + 8, size - 8, 0, data, 8);
    summary b = run(data + 8, size - 8, 0, NULL, 0);
    if (a.n != b.n || a.sum != b.sum || a.offsets != b.offsets || a.st != b.st || a.second != b.second) abort();
    if (a.n >= 2) {
        summary c = run(data + 8, size - 8, (size_t)a.second, data, 8);
        if (c.n != a.n - 1 || c.st != a.st) abort();
    }
    return 0;
}
