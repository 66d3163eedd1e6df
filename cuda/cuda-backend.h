/* cuda-backend.h: the CUDA backend's kernel table (cuda/backend.cu), for whoever assembles the
 * library to register with dc_backend_register (core/ops.h). Only linked when the build compiled
 * cuda/ (DC_WITH_CUDA). */
#ifndef DC_CUDA_BACKEND_H
#define DC_CUDA_BACKEND_H

#ifdef __cplusplus
extern "C" {
#endif

struct dc_backend;
const struct dc_backend *dc_cuda_backend_get(void);

#ifdef __cplusplus
}
#endif
#endif
