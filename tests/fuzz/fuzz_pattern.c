/* fuzz_pattern.c: libFuzzer harness for shard brace patterns (csrc/loader/pattern.c): any input
 * expands or fails cleanly, within a small result limit, and every result is a proper string. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loader/shards.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *pat = malloc(size + 1);
    if (!pat) return 0;
    memcpy(pat, data, size);
    pat[size] = '\0';
    char **list;
    int64_t n;
    if (dc_pattern_expand(pat, 2000, &list, &n) == DC_OK) {
        if (n < 1 || n > 2000) abort();
        for (int64_t i = 0; i < n; i++) (void)strlen(list[i]);
        dc_pattern_free(list, n);
    }
    free(pat);
    return 0;
}
