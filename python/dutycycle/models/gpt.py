"""GPT (nanoGPT layout): token + position embeddings, pre-LN transformer blocks with causal
self-attention and a 4x GELU MLP, final LayerNorm, lm_head tied to the token embedding.
Parameter names match nanoGPT's, so its checkpoints map one to one.
"""

import math
from dataclasses import dataclass

import numpy as np

import dutycycle as dc

from .. import nn
from ..nn import functional as F
from ..optim import AdamW

_GPT2_SIZES = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # 124M
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},  # 350M
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},  # 774M
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},  # 1558M
}


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # bias in Linear and LayerNorm layers, as GPT-2

    @classmethod
    def from_name(cls, name, **overrides):
        if name not in _GPT2_SIZES:
            raise ValueError(f"unknown GPT config {name!r}; known: {sorted(_GPT2_SIZES)}")
        return cls(
            **{"block_size": 1024, "vocab_size": 50257, "bias": True, **_GPT2_SIZES[name], **overrides}
        )

    @classmethod
    def gpt2(cls, **overrides):
        """GPT-2 small: 12 layers, 12 heads, 768 wide, 50257 tokens, 1024 context (124M params)."""
        return cls.from_name("gpt2", **overrides)

    def num_params(self, non_embedding=True):
        """Parameter count of GPT(self), without building it (lm_head is tied: counted once).

        non_embedding drops the position embedding, as nanoGPT reports it.
        """
        C, b = self.n_embd, int(self.bias)
        ln = C * (1 + b)
        block = (
            2 * ln + (C * 3 * C + b * 3 * C) + (C * C + b * C) + (C * 4 * C + b * 4 * C) + (4 * C * C + b * C)
        )
        n = self.vocab_size * C + self.block_size * C + self.n_layer * block + ln
        return n - self.block_size * C if non_embedding else n


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.shape  # x: (B, T, C)
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        q = q.reshape(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.reshape(B, T, nh, hs).transpose(1, 2)
        v = v.reshape(B, T, nh, hs).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.block_size, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                "ln_f": nn.LayerNorm(config.n_embd, bias=config.bias),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one Parameter object
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections, GPT-2 paper
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * config.n_layer))

    @classmethod
    def config_for(cls, name, **overrides):
        return GPTConfig.from_name(name, **overrides)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None):
        """idx (B, T) int64 -> (logits, loss).

        With targets (B, T): logits (B, T, vocab) and the mean cross entropy (targets of -1 are
        ignored). Without: logits for the last position only, (B, 1, vocab), and loss None.
        """
        T = idx.shape[1]  # idx: (B, T)
        if T > self.config.block_size:
            raise ValueError(
                f"cannot forward a sequence of length {T}, block size is only {self.config.block_size}"
            )
        pos = dc.arange(T, dtype=dc.int64, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, T - 1 :, :]), None
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas=(0.9, 0.95), device_type=None):
        """AdamW with weight decay on matrices (dim >= 2) only; biases and norms are not decayed.
        device_type: accepted as nanoGPT passes it (our AdamW is one fused C call on every device)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return AdamW(groups, lr=learning_rate, betas=betas)

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """Model flops utilization (nanoGPT's estimate, PaLM appendix B): achieved flops per second
        over peak_flops (default: an A100's bf16 peak, as nanoGPT)."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.num_params() + 12 * L * H * Q * T
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Append max_new_tokens sampled tokens to idx (B, T) int64; returns (B, T + max_new_tokens).

        temperature 0 picks the argmax. Sampling is done on host copies of the last logits, with
        uniforms drawn from dutycycle's generator (dc.manual_seed makes it reproducible).
        """
        with dc.no_grad():
            for _ in range(max_new_tokens):
                cond = (
                    idx
                    if idx.shape[1] <= self.config.block_size
                    else idx[:, idx.shape[1] - self.config.block_size :]
                )
                logits, _ = self(cond)
                # note: CPU-GPU sync point, the last logits come to the host
                logits = logits[:, -1, :].to(dc.float32).cpu().numpy().astype(np.float64)  # (B, vocab)
                nxt = _sample(logits, temperature, top_k)  # (B,)
                nxt_t = dc.tensor(nxt.tolist(), dtype=dc.int64).view(-1, 1).to(idx.device)
                idx = dc.cat([idx, nxt_t], dim=1)
        return idx


def _sample(logits, temperature, top_k):
    """logits (B, V) float64 numpy -> sampled indices (B,) int64."""
    if temperature == 0:
        return logits.argmax(axis=1)
    logits = logits / temperature
    if top_k is not None:
        kth = np.sort(logits, axis=1)[:, -min(top_k, logits.shape[1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    u = dc.rand(logits.shape[0], dtype=dc.float64).numpy()  # (B,) in [0, 1)
    return np.minimum((cdf <= u[:, None]).sum(axis=1), logits.shape[1] - 1)
