"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers") with a DDPM noise schedule.

Images (B, C, H, W) are cut into p x p patches -> tokens (B, N, C*p*p) -> Linear to hidden, plus a
fixed 2-D sin-cos position embedding. The conditioning c = timestep embedding (+ class embedding)
drives every block through adaLN-Zero: shift/scale/gate from SiLU+Linear(c), zero-initialised, so
each block starts as the identity and the untrained model predicts zero noise.

Diffusion: linear betas over num_timesteps (1000), epsilon prediction. training_loss() is the
simple MSE on the noise (plus, with learn_sigma, Improved DDPM's variational bound term that trains
the interpolated variance); sample() runs DDPM ancestral sampling, or DDIM over fewer steps.
"""

import math
from dataclasses import dataclass

import numpy as np

import dutycycle as dc

from .. import nn
from ..nn import functional as F

_DIT_SIZES = {
    "S": {"depth": 12, "hidden_size": 384, "num_heads": 6},
    "B": {"depth": 12, "hidden_size": 768, "num_heads": 12},
    "L": {"depth": 24, "hidden_size": 1024, "num_heads": 16},
    "XL": {"depth": 28, "hidden_size": 1152, "num_heads": 16},
}


@dataclass
class DiTConfig:
    input_size: int = 32  # image side (latent side for latent diffusion)
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # 0: unconditional
    learn_sigma: bool = False
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    @classmethod
    def from_name(cls, name, **overrides):
        """'DiT-XL/2', 'DiT-B/4', ...: the paper's model sizes (S, B, L, XL) and patch sizes."""
        size, _, patch = name.removeprefix("DiT-").partition("/")
        if size not in _DIT_SIZES or not patch.isdigit():
            raise ValueError(f"unknown DiT config {name!r}; expected DiT-{{S,B,L,XL}}/{{2,4,8}}")
        return cls(**{**_DIT_SIZES[size], "patch_size": int(patch), **overrides})


def _modulate(x, shift, scale):
    # x (B, N, D), shift/scale (B, D)
    return x * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)


def _sincos_1d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))  # (dim/2,)
    out = np.outer(pos.reshape(-1), omega)  # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def sincos_pos_embed_2d(dim, grid_size):
    """(grid_size**2, dim) float32: half the channels encode the row, half the column (MAE/DiT)."""
    gw, gh = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))
    return np.concatenate([_sincos_1d(dim // 2, gw), _sincos_1d(dim // 2, gh)], axis=1).astype(np.float32)


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of (possibly fractional) timesteps t (B,) -> (B, dim) float32."""
    half = dim // 2
    freqs = (
        dc.arange(half, dtype=dc.float32, device=t.device) * (-math.log(max_period) / half)
    ).exp()  # (half,)
    args = t.to(dc.float32).unsqueeze(1) * freqs.unsqueeze(0)  # (B, half)
    emb = dc.cat([args.cos(), args.sin()], dim=-1)
    if dim % 2:
        emb = dc.cat([emb, dc.zeros(emb.shape[0], 1, device=t.device)], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t):
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden_size ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).reshape(B, N, 3, nh, D // nh).permute(2, 0, 3, 1, 4)  # (3, B, nh, N, hd)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, nh, N, hd)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio):
        super().__init__()
        hidden_mlp = int(hidden_size * mlp_ratio)
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_mlp),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden_mlp, hidden_size),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        # x (B, N, D), c (B, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*out)


class DiT(nn.Module):
    def __init__(self, config):
        super().__init__()
        cfg = self.config = config
        if cfg.input_size % cfg.patch_size != 0:
            raise ValueError(
                f"input_size ({cfg.input_size}) must be a multiple of patch_size ({cfg.patch_size})"
            )
        if cfg.hidden_size % 4 != 0:
            raise ValueError(
                f"hidden_size ({cfg.hidden_size}) must be a multiple of 4 for the 2-D sin-cos embedding"
            )
        if cfg.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be positive, got {cfg.num_timesteps}")
        self.out_channels = cfg.in_channels * 2 if cfg.learn_sigma else cfg.in_channels
        self.grid = cfg.input_size // cfg.patch_size
        p, D = cfg.patch_size, cfg.hidden_size
        self.x_embedder = nn.Linear(cfg.in_channels * p * p, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = nn.Embedding(cfg.num_classes, D) if cfg.num_classes > 0 else None
        pos = sincos_pos_embed_2d(D, self.grid)[None]  # (1, N, D)
        self.register_buffer("pos_embed", dc.from_numpy(pos), persistent=False)
        self.blocks = nn.ModuleList([DiTBlock(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(D, p, self.out_channels)
        self._register_schedule()
        self._init_weights()

    # ---- construction -------------------------------------------------------------------------
    def _register_schedule(self):
        """DDPM quantities per timestep (float64 on the host, float32 buffers for gathers)."""
        cfg = self.config
        T = cfg.num_timesteps
        betas = np.linspace(cfg.beta_start, cfg.beta_end, T, dtype=np.float64)
        ab = np.cumprod(1.0 - betas)  # alpha-bar_t
        ab_prev = np.append(1.0, ab[:-1])
        post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
        post_logvar = np.log(np.append(post_var[1], post_var[1:])) if T > 1 else np.log(betas)
        self._np = {
            "betas": betas,
            "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev,
            "posterior_variance": post_var,
            "posterior_log_variance": post_logvar,
        }
        bufs = {
            "sqrt_ab": np.sqrt(ab),
            "sqrt_1m_ab": np.sqrt(1.0 - ab),
            "sqrt_recip_ab": np.sqrt(1.0 / ab),
            "sqrt_recipm1_ab": np.sqrt(1.0 / ab - 1.0),
            "post_coef1": betas * np.sqrt(ab_prev) / (1.0 - ab),
            "post_coef2": (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab),
            "post_logvar": post_logvar,
            "log_betas": np.log(betas),
        }
        for name, arr in bufs.items():
            self.register_buffer("_sched_" + name, dc.from_numpy(arr.astype(np.float32)), persistent=False)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block and the final layer start as the identity / zero output.
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- network ------------------------------------------------------------------------------
    def patchify(self, x):
        """(B, C, H, W) -> (B, N, C*p*p), patches in row-major order, features (C, p, p)."""
        B, C, H, W = x.shape
        p, g = self.config.patch_size, self.grid
        if H != self.config.input_size or W != self.config.input_size or C != self.config.in_channels:
            raise ValueError(
                f"DiT expects images (B, {self.config.in_channels}, {self.config.input_size}, "
                f"{self.config.input_size}), got {tuple(x.shape)}"
            )
        return x.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)

    def unpatchify(self, x):
        """(B, N, p*p*C_out) with features (p, p, C_out) -> (B, C_out, H, W)."""
        B = x.shape[0]
        p, g, c = self.config.patch_size, self.grid, self.out_channels
        return x.reshape(B, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(B, c, g * p, g * p)

    def forward(self, x, t, y=None):
        """x (B, C, H, W), t (B,) timesteps, y (B,) int64 labels -> (B, C_out, H, W)."""
        if self.y_embedder is not None and y is None:
            raise ValueError(
                f"this DiT is class-conditional (num_classes={self.config.num_classes}): pass labels y"
            )
        if self.y_embedder is None and y is not None:
            raise ValueError("this DiT is unconditional (num_classes=0): labels y must be None")
        h = self.x_embedder(self.patchify(x)) + self.pos_embed.to(x.dtype)  # (B, N, D)
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))

    # ---- diffusion ----------------------------------------------------------------------------
    def _at(self, name, t, ndim):
        """Schedule buffer at timesteps t (B,), shaped (B, 1, ..., 1) to broadcast over images."""
        v = getattr(self, "_sched_" + name).index_select(0, t)
        return v.view(t.shape[0], *([1] * (ndim - 1)))

    def q_sample(self, x0, t, noise):
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
        return self._at("sqrt_ab", t, x0.dim()) * x0 + self._at("sqrt_1m_ab", t, x0.dim()) * noise

    def training_loss(self, x0, y=None):
        """Mean squared error between predicted and true noise at uniformly random timesteps.

        With learn_sigma the variational-bound term of Improved DDPM is added (x0 assumed in
        [-1, 1] for the t = 0 decoder likelihood).
        """
        B, C = x0.shape[0], x0.shape[1]
        t = dc.randint(0, self.config.num_timesteps, (B,), dtype=dc.int64, device=x0.device)  # (B,) int64
        noise = dc.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        out = self(x_t, t, y)
        if not self.config.learn_sigma:
            return F.mse_loss(out, noise)
        eps, v = out[:, :C], out[:, C:]
        return F.mse_loss(eps, noise) + self._vb_loss(x0, x_t, t, eps.detach(), v).mean()

    def _vb_loss(self, x0, x_t, t, eps, v):
        """Per-sample KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) in bits; at t=0 the decoder NLL."""
        nd = x0.dim()
        mean_q = self._at("post_coef1", t, nd) * x0 + self._at("post_coef2", t, nd) * x_t
        logvar_q = self._at("post_logvar", t, nd)
        x0_pred = self._at("sqrt_recip_ab", t, nd) * x_t - self._at("sqrt_recipm1_ab", t, nd) * eps
        mean_p = self._at("post_coef1", t, nd) * x0_pred + self._at("post_coef2", t, nd) * x_t
        logvar_p = self._model_logvar(v, t)
        kl = (
            (logvar_q - logvar_p).exp()
            + (mean_q - mean_p) ** 2 * (-logvar_p).exp()
            + logvar_p
            - logvar_q
            - 1.0
        ) * 0.5
        nll = -_discretized_gaussian_loglik(x0, mean_p, logvar_p * 0.5)
        dims = tuple(range(1, nd))
        kl, nll = kl.mean(dims) / math.log(2.0), nll.mean(dims) / math.log(2.0)  # (B,)
        return dc.where(t == 0, nll, kl)

    def _model_logvar(self, v, t):
        # v in [-1, 1] interpolates log variance between posterior (min) and beta_t (max).
        frac = (v + 1.0) * 0.5
        nd = v.dim()
        return frac * self._at("log_betas", t, nd) + (1.0 - frac) * self._at("post_logvar", t, nd)

    def sample(self, n, y=None, steps=None, eta=0.0, clip_denoised=False):
        """Draw n images (n, C, H, W) from noise.

        steps None (or num_timesteps): DDPM ancestral sampling over every timestep (variance beta_t,
        or the learned one with learn_sigma). steps < num_timesteps: DDIM over that many evenly
        spaced timesteps (eta=0 deterministic, eta=1 DDPM-like). Labels y (n,) default to random
        classes for a class-conditional model.
        """
        cfg = self.config
        T = cfg.num_timesteps
        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        if self.y_embedder is not None and y is None:
            y = dc.randint(0, cfg.num_classes, (n,), dtype=dc.int64, device=device)
        elif y is not None and not isinstance(y, dc.Tensor):
            y = dc.tensor(list(y), dtype=dc.int64, device=device)
        if steps is not None and not 1 <= steps <= T:
            raise ValueError(f"steps must be in [1, {T}], got {steps}")
        with dc.no_grad():
            x = dc.randn(n, cfg.in_channels, cfg.input_size, cfg.input_size, device=device, dtype=dtype)
            if steps is None or steps == T:
                for t in range(T - 1, -1, -1):
                    x = self._ddpm_step(x, t, y, clip_denoised)
            else:
                seq = sorted(set(np.linspace(0, T - 1, steps).round().astype(int).tolist()), reverse=True)
                for i, t in enumerate(seq):
                    t_prev = seq[i + 1] if i + 1 < len(seq) else -1
                    x = self._ddim_step(x, t, t_prev, y, eta, clip_denoised)
        return x

    def _predict(self, x, t, y):
        tt = dc.full((x.shape[0],), t, dtype=dc.int64, device=x.device)
        out = self(x, tt, y)
        C = self.config.in_channels
        return (out[:, :C], out[:, C:]) if self.config.learn_sigma else (out, None)

    def _coef(self, name, t):
        # Host-side schedule value as a Python float (t < 0 means "before the start": 1.0).
        return 1.0 if t < 0 else float(self._np[name][t])

    def _x0_from_eps(self, x, t, eps, clip):
        ab = self._coef("alphas_cumprod", t)
        x0 = x * math.sqrt(1.0 / ab) - eps * math.sqrt(1.0 / ab - 1.0)
        return x0.clamp(-1.0, 1.0) if clip else x0

    def _ddpm_step(self, x, t, y, clip):
        eps, v = self._predict(x, t, y)
        x0 = self._x0_from_eps(x, t, eps, clip)
        ab, ab_prev, beta = (
            self._coef("alphas_cumprod", t),
            self._coef("alphas_cumprod_prev", t),
            self._coef("betas", t),
        )
        mean = x0 * (beta * math.sqrt(ab_prev) / (1.0 - ab)) + x * (
            (1.0 - ab_prev) * math.sqrt(1.0 - beta) / (1.0 - ab)
        )
        if t == 0:
            return mean
        noise = dc.randn_like(x)
        if v is None:  # "fixed large" variance beta_t, as DiT
            return mean + noise * math.sqrt(beta)
        frac = (v + 1.0) * 0.5
        logvar = frac * math.log(beta) + (1.0 - frac) * self._coef("posterior_log_variance", t)
        return mean + noise * (logvar * 0.5).exp()

    def _ddim_step(self, x, t, t_prev, y, eta, clip):
        eps, _ = self._predict(x, t, y)
        x0 = self._x0_from_eps(x, t, eps, clip)
        ab, ab_prev = self._coef("alphas_cumprod", t), self._coef("alphas_cumprod", t_prev)
        if clip:  # keep eps consistent with the clipped x0
            eps = (x * math.sqrt(1.0 / ab) - x0) * (1.0 / math.sqrt(1.0 / ab - 1.0))
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab)) * math.sqrt(1.0 - ab / ab_prev)
        x = x0 * math.sqrt(ab_prev) + eps * math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0))
        if sigma > 0:
            x = x + dc.randn_like(x) * sigma
        return x


def _approx_std_normal_cdf(x):
    return ((((x**3) * 0.044715 + x) * math.sqrt(2.0 / math.pi)).tanh() + 1.0) * 0.5


def _discretized_gaussian_loglik(x, means, log_scales):
    """log-likelihood of x in [-1, 1] quantised to 256 levels under N(means, exp(log_scales)^2)."""
    centered = x - means
    inv_std = (-log_scales).exp()
    cdf_plus = _approx_std_normal_cdf((centered + 1.0 / 255.0) * inv_std)
    cdf_min = _approx_std_normal_cdf((centered - 1.0 / 255.0) * inv_std)
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return dc.where(x < -0.999, log_cdf_plus, dc.where(x > 0.999, log_one_minus_cdf_min, log_delta))
