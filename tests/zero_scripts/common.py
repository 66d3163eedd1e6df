"""Shared pieces of the ZeRO / parameter-server tests: a small GPT (LayerNorm + Linear + tied
Embedding) with an uneven parameter count, its data, AdamW with two param groups (decay on
matrices only, as nanoGPT), and a reference run in one process with the whole batch."""

import numpy as np

import dutycycle as dc
from dutycycle.models.gpt import GPT, GPTConfig

VOCAB, BLOCK = 37, 9


def make_model(n_embd=11, n_layer=1, n_head=1, seed=0):
    dc.manual_seed(seed)
    # vocab 37, block 9, n_embd 11, one layer: 2,101 elements (lm_head tied to wte), odd and not a
    # multiple of 3 or 4: every world size pads
    return GPT(GPTConfig(block_size=BLOCK, vocab_size=VOCAB, n_layer=n_layer, n_head=n_head, n_embd=n_embd))


def make_optimizer(model, lr=1e-2):
    # two groups with different weight decay: ZeRO steps each rank's pieces per group
    return model.configure_optimizers(weight_decay=0.1, learning_rate=lr, betas=(0.9, 0.95))


def batches(steps, global_batch, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=(global_batch, BLOCK + 1)) for _ in range(steps)]


def loss_of(model, xy):
    x = dc.tensor(xy[:, :-1].astype(np.int64))
    y = dc.tensor(xy[:, 1:].astype(np.int64))
    _, loss = model(x, y)
    return loss


def reference(steps, global_batch, **kw):
    """One process, batch = N * B: the parameters every strategy must reach."""
    model = make_model(**kw)
    opt = make_optimizer(model)
    for xy in batches(steps, global_batch):
        opt.zero_grad()
        loss_of(model, xy).backward()
        opt.step()
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, opt


def rel_err(a, b):
    """||a - b|| / ||b|| over all parameters together (a dict of arrays each).

    Not per tensor: the key part of c_attn's bias has a gradient that is zero in exact arithmetic
    (softmax ignores a shift shared by all keys), so in float32 it is rounding noise, which AdamW
    scales up to +-lr; its per-tensor error is the same for any two ways of splitting the batch."""
    num = sum(float(((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2).sum()) for k in b)
    den = sum(float((b[k].astype(np.float64) ** 2).sum()) for k in b)
    return (num / den) ** 0.5
