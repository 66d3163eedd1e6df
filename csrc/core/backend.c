/* backend.c: device dispatch. Looks up the kernel table for a device and launches one kernel. */
#include "backend-impl.h"

const char *const dc_kop_names[DC_KOP_COUNT] = {
    "copy",
    "fill",
    "arange",
    "rand",
    "randn",
    "randint",
    "neg",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "relu",
    "gelu_tanh",
    "gelu",
    "silu",
    "abs",
    "clamp",
    "pow_scalar",
    "rpow_scalar",
    "add",
    "sub",
    "mul",
    "div",
    "pow",
    "maximum",
    "minimum",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "relu_backward",
    "gelu_tanh_backward",
    "gelu_backward",
    "silu_backward",
    "sigmoid_backward",
    "tanh_backward",
    "clamp_backward",
    "where",
    "sum",
    "max",
    "min",
    "argmax",
    "argmin",
    "softmax",
    "log_softmax",
    "softmax_backward",
    "log_softmax_backward",
    "layer_norm",
    "layer_norm_backward",
    "matmul",
    "gather",
    "scatter_add",
    "index_select",
    "index_add",
    "tril",
    "sgd_step",
    "adamw_step",
    "norm",
    "scale",
};
_Static_assert(sizeof(dc_kop_names) / sizeof(dc_kop_names[0]) == DC_KOP_COUNT, "dc_kop_names must name every dc_kop");

const dc_backend *dc_backend_get(int device_type)
{
    if (device_type == DC_CPU) return dc_cpu_backend_get();
#ifdef DC_WITH_CUDA
    if (device_type == DC_CUDA) return dc_cuda_backend_get();
#endif
    return NULL;
}

void dc_kview_of(dc_kview *v, const dc_tensor *t)
{
    v->data = dc_data(t);
    v->ndim = t->ndim;
    v->dtype = t->dtype;
    for (int d = 0; d < t->ndim; d++) {
        v->shape[d] = t->shape[d];
        v->strides[d] = t->strides[d];
    }
}

dc_status dc_launch(dc_device dev, const dc_kargs *a)
{
    const dc_backend *be = dc_backend_get(dev.type);
    if (!be)
        return dc_error(DC_ERR_DEVICE, "device %s is not available: dutycycle was built without CUDA",
                        dc_device_str(dev));
    if ((unsigned)a->op >= DC_KOP_COUNT) return dc_error(DC_ERR_INTERNAL, "bad kernel id %d", (int)a->op);
    dc_kernel_fn fn = be->kernels[a->op];
    if (!fn)
        return dc_error(DC_ERR_UNSUPPORTED, "op '%s' has no kernel for device %s yet", dc_kop_names[a->op],
                        dc_device_str(dev));
    return fn(a);
}
