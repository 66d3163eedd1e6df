"""dutycycle.models: reference models built from dutycycle.nn (GPT, DiT)."""

from .dit import DiT, DiTConfig
from .gpt import GPT, GPTConfig

__all__ = ["GPT", "DiT", "DiTConfig", "GPTConfig"]
