/* fuzz_npy_jpeg.c: libFuzzer harness for the sample decoders (csrc/loader/decode.c): the .npy
 * header parser on the whole input, and the JPEG decoder with small options chosen by the input's
 * first bytes (resize, crop mode and size, flip, dtype). Images the header says are over 4 MP are
 * skipped to keep runs fast (dc_jpeg_info reads only the header). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loader/shards.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dc_npy_info info;
    if (dc_npy_parse(data, size, &info) == DC_OK) {
        if (info.data_offset > size || info.nbytes > size - info.data_offset) abort();
        volatile uint8_t sink = 0;
        if (info.nbytes) sink ^= data[info.data_offset + info.nbytes - 1];
        (void)sink;
    }
    if (size < 4) return 0;
    const uint8_t *img = data + 4;
    size_t len = size - 4;
    int h, w, c;
    if (dc_jpeg_info(img, len, &h, &w, &c) != DC_OK || (int64_t)h * w > 4 << 20) return 0;
    dc_image_opts o = { 0 };
    o.resize = data[0] % 3 == 0 ? 0 : 1 + data[0] % 40;
    o.crop = data[1] % 4;
    o.crop_h = 1 + data[2] % 24;
    o.crop_w = 1 + data[3] % 24;
    o.scale[0] = 0.08f, o.scale[1] = 1.0f;
    o.ratio[0] = 0.75f, o.ratio[1] = 4.0f / 3.0f;
    o.flip_p = (data[1] >> 2) % 2 ? 0.5f : 0.0f;
    o.out_dtype = (data[1] >> 3) % 3 == 0 ? DC_UINT8 : (data[1] >> 3) % 3 == 1 ? DC_FLOAT32 : DC_BFLOAT16;
    o.std[0] = o.std[1] = o.std[2] = 0.25f;
    o.seed = data[2];
    void *out;
    int oh, ow;
    if (dc_jpeg_decode(img, len, &o, &out, &oh, &ow) == DC_OK) {
        int eh, ew;
        dc_image_out_size(&o, h, w, &eh, &ew);
        if (eh != oh || ew != ow) abort();
        size_t item = o.out_dtype == DC_UINT8 ? 1 : o.out_dtype == DC_FLOAT32 ? 4 : 2;
        volatile uint8_t sink = ((uint8_t *)out)[(size_t)oh * ow * 3 * item - 1];
        (void)sink;
        free(out);
    }
    return 0;
}
