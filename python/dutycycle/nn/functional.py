"""nn.functional: stateless layer functions composed from Tensor ops and fused _C kernels.

Fused kernels (layer_norm, gelu, silu, dropout) come from the engine; the rest (cross_entropy,
scaled_dot_product_attention, ...) are compositions whose gradients come from autograd.
"""

import math

import dutycycle as dc

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


from ..amp import autocast_mode as _ac  # noqa: E402

_ac_local = _ac._local


def linear(x, weight, bias=None):
    """x (..., in) @ weight.T (in, out) + bias (out,) -> (..., out)."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[-1]} features, weight expects {weight.shape[1]} (weight {tuple(weight.shape)})"
        )
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(-1, x.shape[-1])
    if _ac_local.__dict__.get("active"):  # autocast: the weight (a leaf) is cast once per region
        x2, weight = _ac.lower(x2, weight)
        y = dc._C.matmul(x2, weight.t())  # (N, out), already in autocast's precision
    else:
        y = x2 @ weight.t()  # (N, out)
    if bias is not None:
        y = y + (bias.to(y.dtype) if y.dtype != bias.dtype and _ac_local.__dict__.get("active") else bias)
    return y.view(*lead, weight.shape[0])


def relu(x, inplace=False):
    return _maybe_inplace(x, x.relu(), inplace)


def silu(x, inplace=False):
    return _maybe_inplace(x, dc._C.ops.silu(x), inplace)


def gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return dc._C.gelu(x, approximate == "tanh")


def leaky_relu(x, negative_slope=0.01, inplace=False):
    return _maybe_inplace(x, dc.where(x > 0, x, x * negative_slope), inplace)


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta * x)) / beta, linear where beta * x > threshold (torch's rule)."""
    bx = x * beta
    soft = (bx.clamp(min=0) + ((-bx.abs()).exp() + 1.0).log()) / beta
    return dc.where(bx > threshold, x, soft)


def tanh(x):
    return x.tanh()


def sigmoid(x):
    return x.sigmoid()


def softmax(x, dim=-1, dtype=None):
    return (x if dtype is None else x.to(dtype)).softmax(dim)


def log_softmax(x, dim=-1, dtype=None):
    return (x if dtype is None else x.to(dtype)).log_softmax(dim)


def normalize(x, p=2.0, dim=1, eps=1e-12):
    """x / max(||x||_p, eps) along dim."""
    return x / x.norm(p, dim=dim, keepdim=True).clamp(min=eps)


def one_hot(tensor, num_classes=-1):
    """int64 class indices (...) -> int64 one-hot (..., num_classes)."""
    if tensor.dtype not in (dc.int64, dc.int32):
        raise TypeError(f"one_hot: expected an int64 tensor of class indices, got {tensor.dtype}")
    if num_classes < 0:
        num_classes = int(tensor.max().item()) + 1 if tensor.numel() else 0
    classes = dc.arange(num_classes, dtype=tensor.dtype, device=tensor.device)
    return (tensor.unsqueeze(-1) == classes).long()


def dropout(x, p=0.5, training=True, inplace=False):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    return _maybe_inplace(x, dc._C.dropout(x, p, training), inplace)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) != 1 or x.dim() == 0 or x.shape[-1] != shape[0]:
        raise ValueError(
            f"layer_norm normalises over the last dimension only: normalized_shape={shape} "
            f"must be ({x.shape[-1] if x.dim() else '?'},) for input of shape {tuple(x.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"layer_norm: {name} has shape {tuple(t.shape)}, expected {shape}")
    if _ac_local.__dict__.get("active"):  # autocast: a float32-list op
        x = _ac.fp32(x)
        if weight is not None and weight.dtype != x.dtype:
            weight, bias = weight.to(x.dtype), None if bias is None else bias.to(x.dtype)
    return dc._C.layer_norm(x, weight, bias, eps)


_FINFO_EPS = {"float32": 2.0 ** -23, "float64": 2.0 ** -52, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """x / sqrt(mean(x**2 over the trailing normalized_shape dims) + eps) * weight (torch's
    F.rms_norm; eps=None is the dtype's machine epsilon). float16/bfloat16 input is computed in
    float32 (the weight too) and cast back at the end."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or input.dim() < k or tuple(input.shape[-k:]) != shape:
        raise ValueError(f"rms_norm: normalized_shape={shape} must match the last dims of the input "
                         f"of shape {tuple(input.shape)}")
    if weight is not None and tuple(weight.shape) != shape:
        raise ValueError(f"rms_norm: weight has shape {tuple(weight.shape)}, expected {shape}")
    if eps is None:
        eps = _FINFO_EPS.get(input.dtype.name, 2.0 ** -23)
    low = input.dtype in (dc.float16, dc.bfloat16)
    x = input.float() if low else input
    dims = tuple(range(-k, 0))
    out = x * ((x * x).mean(dims, keepdim=True) + eps).rsqrt()
    if weight is not None:
        out = out * (weight.float() if low else weight)
    return out.to(input.dtype) if low else out


def _pad_index(n, lo, hi, mode, d, shape):
    """Source index of each output position along a dim of size n padded by (lo, hi)."""
    if mode == "reflect" and (lo >= n or hi >= n):
        raise ValueError(f"pad: padding ({lo}, {hi}) should be less than the dimension {d} of size {n} of the "
                         f"input of shape {shape} (mode='reflect')")
    if mode == "circular" and (lo > n or hi > n):
        raise ValueError(f"pad: padding ({lo}, {hi}) should be at most the dimension {d} of size {n} of the input "
                         f"of shape {shape} (mode='circular')")
    if n == 0:
        raise ValueError(f"pad: mode={mode!r} can't pad dimension {d} of size 0 (input of shape {shape})")
    idx = []
    for i in range(-lo, n + hi):
        if mode == "reflect":
            j = -i if i < 0 else (2 * (n - 1) - i if i >= n else i)
        elif mode == "replicate":
            j = min(max(i, 0), n - 1)
        else:
            j = i % n
        idx.append(j)
    return idx


def pad(input, pad, mode="constant", value=None):
    """Pad (or, with negative amounts, crop) the trailing dims: pad = (last_left, last_right,
    second_last_left, ...), as torch's F.pad. mode 'reflect', 'replicate' and 'circular' pad the
    last 1-3 dims of a batched (N, C, ...) or unbatched (C, ...) input, as torch."""
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ValueError(f"pad: unknown mode {mode!r} (expected 'constant', 'reflect', 'replicate' or 'circular')")
    pad = tuple(pad)
    if mode != "constant":
        if value:
            raise ValueError(f"pad: padding mode {mode!r} doesn't take in a value argument")
        k = len(pad) // 2
        if len(pad) % 2 or k > 3 or input.dim() not in (k + 1, k + 2):
            raise NotImplementedError(
                f"pad: mode={mode!r} pads the last 1-3 dims of a (N, C, ...) or (C, ...) input; got pad of "
                f"length {len(pad)} for input of shape {tuple(input.shape)}")
        out = input
        for i in range(k):
            d = input.dim() - 1 - i
            lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
            if lo or hi:
                if lo < 0 or hi < 0:
                    raise ValueError(f"pad: negative padding {(lo, hi)} is not supported with mode={mode!r}")
                idx = _pad_index(out.shape[d], lo, hi, mode, d, tuple(input.shape))
                out = out.index_select(d, dc.tensor(idx, dtype=dc.int64, device=out.device))
        return out
    if len(pad) % 2 or len(pad) // 2 > input.dim():
        raise ValueError(f"pad: padding length {len(pad)} must be even and at most 2 * input.dim() "
                         f"({2 * input.dim()}) for input of shape {tuple(input.shape)}")
    value = 0 if value is None else value
    out = input
    for i in range(len(pad) // 2):
        d = input.dim() - 1 - i
        lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
        n = out.shape[d]
        start, stop = max(0, -lo), n - max(0, -hi)
        if stop < start:
            raise ValueError(f"pad: padding {(lo, hi)} crops dim {d} of size {n} to a negative size")
        if start or stop != n:
            out = out.narrow(d, start, stop - start)
        parts = []
        for amount in (lo, hi):
            if amount > 0:
                shape = list(out.shape)
                shape[d] = amount
                parts.append(dc.full(shape, value, dtype=out.dtype, device=out.device))
            else:
                parts.append(None)
        if parts[0] is not None or parts[1] is not None:
            out = dc.cat([t for t in (parts[0], out, parts[1]) if t is not None], d)
    return out


def embedding(idx, weight):
    """idx (...) int64 -> weight rows (..., D). Out-of-range indices raise from the engine."""
    if idx.dtype not in (dc.int64, dc.int32):
        raise TypeError(f"embedding: indices must be int64 (or int32), got {idx.dtype}")
    rows = weight.index_select(0, idx.reshape(-1))  # (numel, D)
    return rows.view(*idx.shape, weight.shape[1])


def mse_loss(input, target, reduction="mean"):
    if _ac_local.__dict__.get("active"):  # autocast: losses in float32
        input = _ac.fp32(input)
        if target.dtype.is_floating_point:
            target = _ac.fp32(target)
    _check_reduction(reduction)
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"mse_loss: input shape {tuple(input.shape)} != target shape {tuple(target.shape)}")
    d = input - target
    sq = d * d
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    return sq


def _reduce(loss, reduction):
    _check_reduction(reduction)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_same_shape(name, input, target):
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"{name}: input shape {tuple(input.shape)} != target shape {tuple(target.shape)} (torch "
                         "warns and broadcasts here, which is nearly always a bug)")


def l1_loss(input, target, reduction="mean"):
    _check_reduction(reduction)
    _check_same_shape("l1_loss", input, target)
    return _reduce((input - target).abs(), reduction)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    _check_reduction(reduction)
    _check_same_shape("smooth_l1_loss", input, target)
    d = (input - target).abs()
    if beta == 0:
        return _reduce(d, reduction)
    return _reduce(dc.where(d < beta, d * d * (0.5 / beta), d - 0.5 * beta), reduction)


def huber_loss(input, target, reduction="mean", delta=1.0):
    return smooth_l1_loss(input, target, reduction, beta=delta) * delta


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """-[pos_weight * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x))], computed stably."""
    _check_reduction(reduction)
    _check_same_shape("binary_cross_entropy_with_logits", input, target)
    if not target.dtype.is_floating_point:
        raise TypeError(f"binary_cross_entropy_with_logits: target must be floating point (0./1.), got {target.dtype}")
    log_sig_neg = (-input).clamp(min=0) + ((-input.abs()).exp() + 1.0).log()  # -log sigmoid(x)
    if pos_weight is None:
        loss = (1 - target) * input + log_sig_neg
    else:
        loss = (1 - target) * input + (1 + (pos_weight - 1) * target) * log_sig_neg
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """-[y log p + (1 - y) log(1 - p)] on probabilities, each log clamped at -100 as in torch."""
    _check_reduction(reduction)
    _check_same_shape("binary_cross_entropy", input, target)
    loss = -(target * input.log().clamp(min=-100) + (1 - target) * (1 - input).log().clamp(min=-100))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log likelihood from log-probabilities input (N, C) (or (C,)) and int64 targets (N,)."""
    if _ac_local.__dict__.get("active"):  # autocast: losses in float32
        input = _ac.fp32(input)
        if target.dtype.is_floating_point:
            target = _ac.fp32(target)
    _check_reduction(reduction)
    if weight is not None:
        raise NotImplementedError("nll_loss: class weights are not supported")
    if target.dtype != dc.int64:
        raise TypeError(f"nll_loss: target must be int64 class indices, got {target.dtype}")
    if input.dim() not in (1, 2) or tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(f"nll_loss: expected input (N, C) with target (N,), got {tuple(input.shape)} and "
                         f"{tuple(target.shape)}")
    logp = input.reshape(-1, input.shape[-1])
    tgt = target.reshape(-1)
    ignored = tgt == ignore_index
    loss = -logp.gather(1, tgt.masked_fill(ignored, 0).unsqueeze(1)).squeeze(1)
    loss = loss.masked_fill(ignored, 0.0)
    if reduction == "none":
        return loss.view(*target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (tgt != ignore_index).to(loss.dtype).sum()


def cross_entropy(input, target, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Softmax cross entropy from logits and int64 class indices.

    input (N, C) with target (N,), input (C,) with target (), or class-last input (B, T, ..., C)
    with target (B, T, ...) (nanoGPT layout; note torch puts C second for >2-D inputs).
    Targets equal to ignore_index add nothing and are left out of the 'mean' denominator
    (all ignored -> nan, as in torch). label_smoothing mixes in the uniform distribution:
    loss = (1 - eps) * nll + eps * mean_c(-log p_c). On CUDA the softmax is fused into the loss
    (the cross_entropy op: no (N, C) probability matrix is kept for backward).
    """
    raw_input = input
    if _ac_local.__dict__.get("active"):  # autocast: losses in float32
        input = _ac.fp32(input)
        if target.dtype.is_floating_point:
            target = _ac.fp32(target)
    _check_reduction(reduction)
    if not isinstance(input, dc.Tensor) or not isinstance(target, dc.Tensor):
        raise TypeError("cross_entropy: input and target must be Tensors")
    if not input.dtype.is_floating_point:
        raise TypeError(f"cross_entropy: input must be floating point logits, got {input.dtype}")
    if target.dtype != dc.int64:
        raise TypeError(f"cross_entropy: target must be int64 (dc.long) class indices, got {target.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if input.dim() == 0:
        raise ValueError("cross_entropy: input must have at least 1 dimension (classes)")
    if tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(
            f"cross_entropy: target shape {tuple(target.shape)} does not match input shape {tuple(input.shape)}; "
            f"expected target of shape {tuple(input.shape[:-1])} (classes are the last input dimension)"
        )
    C = input.shape[-1]
    logits = input.reshape(-1, C)  # (N, C)
    tgt = target.reshape(-1)  # (N,)
    if input.device.type == "cuda" and _has_cuda_kernel("cross_entropy"):
        # fused with the softmax: only the row logsumexp is kept for backward, not (N, C) probabilities;
        # 16-bit logits are read as they are (computed in float32, loss in float32)
        if raw_input.dtype.itemsize == 2:
            logits = raw_input.reshape(-1, C)
        loss = dc._C.cross_entropy(logits, tgt, int(ignore_index), float(label_smoothing))  # (N,)
        out = _ce_reduce(loss, tgt, target, ignore_index, reduction)
        # torch's dtype: that of the (autocast-cast) input; reduced in float32, rounded once
        return out if out.dtype == input.dtype else out.to(input.dtype)
    logp = logits.log_softmax(-1)  # (N, C)
    ignored = tgt == ignore_index  # (N,) bool
    safe = tgt.masked_fill(ignored, 0)  # gather needs in-range indices on ignored rows
    loss = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)  # (N,)
    if label_smoothing > 0.0:
        loss = loss * (1.0 - label_smoothing) - logp.mean(-1) * label_smoothing
    loss = loss.masked_fill(ignored, 0.0)
    return _ce_reduce(loss, tgt, target, ignore_index, reduction)


def _ce_reduce(loss, tgt, target, ignore_index, reduction):
    if reduction == "none":
        return loss.view(*target.shape)
    if reduction == "sum":
        return loss.sum()
    count = (tgt != ignore_index).to(loss.dtype).sum()  # stays on device: no sync
    return loss.sum() / count


def _has_cuda_kernel(op):
    """Whether the CUDA kernel table fills op's slot (cached)."""
    if op not in _FLASH:
        row = next((r for r in dc._C.ops.table() if r["name"] == op), None)
        _FLASH[op] = bool(row and "cuda" in row["devices"])
    return _FLASH[op]


_FLASH = {}


def _flash_on_cuda():
    """Whether the CUDA kernel table has the fused attention kernel (cached)."""
    return _has_cuda_kernel("flash_attention")


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """softmax(q @ k^T * scale + mask) @ v for q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv).

    attn_mask: bool (True = may attend) or float (added to the scores), broadcastable to
    (..., Tq, Tk). On CUDA, without a mask or dropout, it runs the fused flash-attention kernel (the
    scores are never stored); on the CPU the composition below (BLAS matmuls) is faster. Dropout on
    the attention weights is applied whenever dropout_p > 0 (pass 0.0 in eval mode, as torch expects).
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            "scaled_dot_product_attention: incompatible shapes "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: pass either attn_mask or is_causal, not both")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if attn_mask is None and dropout_p == 0.0 and q.device.type == "cuda" and _flash_on_cuda():
        # fused: the (..., Tq, Tk) scores are never stored, forward or backward
        if _ac_local.__dict__.get("active"):
            q, k = _ac.lower(q, k)
            v = _ac.lower(v, v)[0]
        if q.dtype == k.dtype == v.dtype and q.dim() == k.dim() == v.dim() and q.shape[:-2] == k.shape[:-2]:
            return dc._C.flash_attention(q, k, v, float(scale), bool(is_causal))
    if attn_mask is None:  # scale, causal mask and softmax in one C pass over the (..., Tq, Tk) scores
        scores = q @ k.transpose(-2, -1)
        if _ac_local.__dict__.get("active"):
            scores = _ac.fp32(scores)  # autocast: the softmax in float32, the second matmul casts back
        att = dc._C.attn_softmax(scores, scale, is_causal)
    else:
        att = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk)
        if attn_mask.dtype == dc.bool:
            att = att.masked_fill(attn_mask.to(att.dtype) == 0, float("-inf"))
        else:
            att = att + attn_mask
        att = att.softmax(-1)
    if dropout_p > 0.0:
        att = dc._C.dropout(att, dropout_p, True)
    return att @ v  # (..., Tq, Dv)


# --- activations with torch's inplace= argument, and more of torch's activations ------------------
# inplace=True writes the result into the input when autograd does not track it (no_grad, or an
# input that does not require grad). Under autograd the engine refuses in-place writes into a
# tensor that requires grad, so the result is returned out of place: the same numbers and the same
# gradients as torch's in-place version; only the input tensor is left unchanged.

def _maybe_inplace(x, out, inplace):
    if not inplace or (x.requires_grad and dc.is_grad_enabled()):
        return out
    with dc.no_grad():
        x.copy_(out)
    return x


def elu(x, alpha=1.0, inplace=False):
    """x where x > 0, alpha * (exp(x) - 1) elsewhere."""
    return _maybe_inplace(x, dc.where(x > 0, x, x.expm1() * alpha), inplace)


def selu(x, inplace=False):
    """scale * elu(x, alpha) with torch's SELU constants."""
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    return _maybe_inplace(x, dc.where(x > 0, x * scale, x.expm1() * (alpha * scale)), inplace)


def celu(x, alpha=1.0, inplace=False):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    return _maybe_inplace(x, dc.where(x > 0, x, (x / alpha).expm1() * alpha), inplace)


def mish(x, inplace=False):
    """x * tanh(softplus(x))."""
    return _maybe_inplace(x, x * softplus(x).tanh(), inplace)


def hardsigmoid(x, inplace=False):
    """clamp(x / 6 + 1/2, 0, 1)."""
    return _maybe_inplace(x, (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0), inplace)


def hardswish(x, inplace=False):
    """x * relu6(x + 3) / 6."""
    return _maybe_inplace(x, x * (x + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0), inplace)


def hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
    if min_val > max_val:
        raise ValueError("hardtanh: min_val cannot be greater than max_val")
    return _maybe_inplace(x, x.clamp(min_val, max_val), inplace)


def relu6(x, inplace=False):
    return hardtanh(x, 0.0, 6.0, inplace)


def logsigmoid(x):
    """log(sigmoid(x)), computed stably as -softplus(-x)."""
    return -((-x).clamp(min=0) + ((-x.abs()).exp() + 1.0).log())


def softsign(x):
    return x / (x.abs() + 1.0)


def tanhshrink(x):
    return x - x.tanh()


# The conv stack (convolutions, pooling, batch norm) and the sampling ops (interpolate, adaptive
# pooling, pixel shuffle, channel dropout, group norm).
# isort: split
from ._convfn import (  # noqa: E402, F401
    avg_pool1d,
    avg_pool2d,
    batch_norm,
    conv1d,
    conv2d,
    conv_transpose1d,
    conv_transpose2d,
    max_pool1d,
    max_pool2d,
)
from .sampling import (  # noqa: E402, F401
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    dropout1d,
    dropout2d,
    group_norm,
    interpolate,
    pixel_shuffle,
    pixel_unshuffle,
    upsample,
    upsample_bilinear,
    upsample_nearest,
)

# isort: split
from .._missing import missing_names  # noqa: E402

__getattr__ = missing_names(__name__, "torch.nn.functional")
