"""MultiheadAttention, TransformerEncoderLayer and TransformerEncoder with torch.nn's arguments,
parameter names (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``linear1``, ``norm1``,
...) and initialisation, so a torch state_dict loads unchanged.

Attention is the plain composition softmax(q k^T / sqrt(head_dim) + mask) v over (N, H, L, S)
scores; its gradients come from autograd. Masks follow MultiheadAttention's convention (a True
in a bool mask means "may NOT attend", the opposite of scaled_dot_product_attention's); float
masks are added to the scores. Shapes: L target length, S source length, N batch, E embed_dim.
"""

import copy
import math

import dutycycle as dc

from . import functional as F
from . import init
from .module import Module
from .modules import Dropout, LayerNorm, Linear, ModuleList
from .parameter import Parameter


def _factory(device, dtype):
    return {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}


def generate_square_subsequent_mask(sz, device=None, dtype=None):
    """(sz, sz) float mask: 0 on and below the diagonal, -inf above (torch.nn.Transformer's)."""
    kw = _factory(device, dtype)
    return dc.full((sz, sz), float("-inf"), **kw).triu(1)


def _as_additive(mask, what, dtype):
    """A bool mask (True = masked out) as 0/-inf floats; a float mask as is."""
    if mask is None:
        return None
    if mask.dtype == dc.bool:
        return dc.zeros(*mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not mask.dtype.is_floating_point:
        raise TypeError(f"MultiheadAttention: only bool and floating types of {what} are supported, got {mask.dtype}")
    return mask.to(dtype)


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention.

    forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False) -> (attn_output, attn_weights or None).
    Inputs (L, N, E) (or (N, L, E) with batch_first, or unbatched (L, E)); key_padding_mask (N, S)
    (True = padding); attn_mask (L, S) or (N * num_heads, L, S). is_causal is a hint, as in torch:
    the mask given in attn_mask is what is applied, and is_causal without attn_mask raises.
    attn_weights are (N, L, S) averaged over heads, or (N, num_heads, L, S).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} and "
                             f"num_heads={num_heads} instead")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim must be divisible by num_heads (got {embed_dim} and {num_heads})")
        kw = _factory(device, dtype)
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        self.add_zero_attn = add_zero_attn
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(dc.empty(3 * embed_dim, embed_dim, **kw))  # (3E, E): q, k, v rows
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = Parameter(dc.empty(embed_dim, embed_dim, **kw))
            self.k_proj_weight = Parameter(dc.empty(embed_dim, self.kdim, **kw))
            self.v_proj_weight = Parameter(dc.empty(embed_dim, self.vdim, **kw))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(dc.empty(3 * embed_dim, **kw))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, **kw)
        if add_bias_kv:
            self.bias_k = Parameter(dc.empty(1, 1, embed_dim, **kw))
            self.bias_v = Parameter(dc.empty(1, 1, embed_dim, **kw))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self):
        # torch: xavier_uniform_ on the projections, zero biases; out_proj.weight keeps Linear's init
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            init.constant_(self.in_proj_bias, 0.0)
            init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
            init.xavier_normal_(self.bias_v)

    def _projections(self):
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.split(E, 0)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        if self.in_proj_bias is None:
            return (wq, None), (wk, None), (wv, None)
        bq, bk, bv = self.in_proj_bias.split(E, 0)
        return (wq, bq), (wk, bk), (wv, bv)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use "
                               "nn.Transformer.generate_square_subsequent_mask to create this mask.")
        batched = query.dim() == 3
        if not batched and query.dim() != 2:
            raise ValueError(f"MultiheadAttention: query should be unbatched 2D or batched 3D, got {query.dim()}-D")
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"MultiheadAttention: query, key and value must all be {query.dim()}-D, got "
                             f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        # to batch-first (N, L, E)
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        N, L, E = query.shape
        S = key.shape[1]
        H, D = self.num_heads, self.head_dim
        if E != self.embed_dim:
            raise ValueError(f"MultiheadAttention: was expecting embedding dimension of {self.embed_dim}, but got {E}")
        if key.shape[0] != N or value.shape[0] != N or value.shape[1] != S:
            raise ValueError(f"MultiheadAttention: key {tuple(key.shape)} and value {tuple(value.shape)} do not "
                             f"match query {tuple(query.shape)}")
        (wq, bq), (wk, bk), (wv, bv) = self._projections()
        q = F.linear(query, wq, bq)  # (N, L, E)
        k = F.linear(key, wk, bk)  # (N, S, E)
        v = F.linear(value, wv, bv)  # (N, S, E)

        mask = _as_additive(attn_mask, "attn_mask", q.dtype)
        if mask is not None:
            if mask.dim() == 2:
                if tuple(mask.shape) != (L, S):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(mask.shape)}, but should be {(L, S)}.")
                mask = mask.view(1, 1, L, S)
            elif mask.dim() == 3:
                if tuple(mask.shape) != (N * H, L, S):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {tuple(mask.shape)}, but should be "
                                       f"{(N * H, L, S)}.")
                mask = mask.view(N, H, L, S)
            else:
                raise RuntimeError(f"attn_mask's dimension {mask.dim()} is not supported")
        kpm = _as_additive(key_padding_mask, "key_padding_mask", q.dtype)
        if kpm is not None and tuple(kpm.shape) != (N, S):
            raise RuntimeError(f"expecting key_padding_mask shape of {(N, S)}, but got {tuple(kpm.shape)}")

        extra = []  # bias_k/bias_v and zero-attention columns appended to the keys
        if self.bias_k is not None:
            k = dc.cat([k, self.bias_k.expand(N, 1, E)], 1)
            v = dc.cat([v, self.bias_v.expand(N, 1, E)], 1)
            extra.append(1)
        k = k.view(N, -1, H, D).transpose(1, 2)  # (N, H, S', D)
        v = v.view(N, -1, H, D).transpose(1, 2)
        if self.add_zero_attn:
            k = dc.cat([k, dc.zeros(N, H, 1, D, dtype=k.dtype, device=k.device)], 2)
            v = dc.cat([v, dc.zeros(N, H, 1, D, dtype=v.dtype, device=v.device)], 2)
            extra.append(1)
        if extra:  # the appended columns are never masked
            pad = sum(extra)
            if mask is not None:
                mask = F.pad(mask, (0, pad))
            if kpm is not None:
                kpm = F.pad(kpm, (0, pad))
        q = q.view(N, L, H, D).transpose(1, 2)  # (N, H, L, D)

        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))  # (N, H, L, S')
        if mask is not None:
            att = att + mask
        if kpm is not None:
            att = att + kpm.view(N, 1, 1, -1)
        att = att.softmax(-1)
        if self.training and self.dropout > 0.0:
            att = F.dropout(att, self.dropout, True)
        out = (att @ v).transpose(1, 2).reshape(N, L, E)  # (N, L, E)
        out = self.out_proj(out)

        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = att.mean(1) if average_attn_weights else att  # (N, L, S') or (N, H, L, S')
        return out, (weights if batched else weights.squeeze(0))

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _activation(activation):
    if isinstance(activation, str):
        if activation == "relu":
            return F.relu
        if activation == "gelu":
            return F.gelu
        raise RuntimeError(f"activation should be relu/gelu, not {activation}")
    if not callable(activation):
        raise TypeError(f"activation must be 'relu', 'gelu' or a callable, got {type(activation).__name__}")
    return activation


class TransformerEncoderLayer(Module):
    """Self-attention then a feed-forward block, each with dropout, a residual and a LayerNorm
    (after the residual, or before the block with norm_first), as torch.nn.TransformerEncoderLayer."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, device=None, dtype=None):
        super().__init__()
        kw = _factory(device, dtype)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **kw)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **kw)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **kw)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation(activation)  # a Module activation registers as a child, as in torch

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerEncoder(Module):
    """num_layers deep copies of encoder_layer (independent parameters, as torch), then `norm`."""

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True, mask_check=True):
        super().__init__()
        if not isinstance(encoder_layer, Module):
            raise TypeError(f"TransformerEncoder: encoder_layer must be a Module, got {type(encoder_layer).__name__}")
        self.layers = ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        # is_causal=None: torch detects a causal mask; the mask itself is applied either way, so
        # the hint only matters (and is only passed on) when a mask is given.
        causal = bool(is_causal) and mask is not None
        out = src
        for layer in self.layers:
            out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=causal)
        if self.norm is not None:
            out = self.norm(out)
        return out
