#!/usr/bin/env python3
"""An independent NumPy forward pass of mixtrain's exported GPT (model.safetensors, PyTorch
layout), used by tests/export.rs to prove the export is loadable and laid out as documented.

Usage: reference_forward.py MODEL.safetensors CASE.json
CASE.json: {"tokens": [[...]], "logits": [[...]]} from mixtrain (tokens [batch, seq],
logits [batch * seq, vocab]). Exits 0 when NumPy's logits match to 1e-4 (max abs diff).
"""
import json
import math
import sys

import numpy as np
from safetensors import safe_open


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x, theta):
    # x: [batch, heads, seq, head_dim]; GPT-NeoX half split.
    _, _, seq, head_dim = x.shape
    half = head_dim // 2
    freqs = theta ** (-(2.0 * np.arange(half)) / head_dim)
    angles = np.arange(seq)[:, None] * freqs[None, :]  # [seq, half]
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(w, cfg, tokens):
    batch, seq = tokens.shape
    d, n_heads = cfg["d_model"], cfg["n_heads"]
    head_dim = d // n_heads
    eps = cfg["norm_eps"]
    linear = lambda x, name: x @ w[name].T  # PyTorch layout: weight [out, in]
    x = w["tok_emb.weight"][tokens]  # [batch, seq, d]
    mask = np.triu(np.full((seq, seq), -np.inf), k=1)
    for i in range(cfg["n_layers"]):
        p = f"blocks.{i}."
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        heads = lambda t: t.reshape(batch, seq, n_heads, head_dim).transpose(0, 2, 1, 3)
        q = rope(heads(linear(h, p + "attn.q_proj.weight")), cfg["rope_theta"])
        k = rope(heads(linear(h, p + "attn.k_proj.weight")), cfg["rope_theta"])
        v = heads(linear(h, p + "attn.v_proj.weight"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attn = scores / scores.sum(axis=-1, keepdims=True)
        out = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, seq, d)
        x = x + linear(out, p + "attn.o_proj.weight")
        h = rms_norm(x, w[p + "mlp_norm.weight"], eps)
        up = linear(h, p + "mlp.up_proj.weight")
        if cfg["mlp"] == "swiglu":
            hidden = silu(linear(h, p + "mlp.gate_proj.weight")) * up
        else:
            hidden = gelu(up)
        x = x + linear(hidden, p + "mlp.down_proj.weight")
    x = rms_norm(x, w["norm_f.weight"], eps).reshape(batch * seq, d)
    head = w["tok_emb.weight"] if cfg["tie_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def main():
    model_path, case_path = sys.argv[1], sys.argv[2]
    with safe_open(model_path, "np") as f:
        cfg = json.loads(f.metadata()["mixtrain_model"])
        weights = {name: f.get_tensor(name).astype(np.float64) for name in f.keys()}
    case = json.load(open(case_path))
    tokens = np.array(case["tokens"], dtype=np.int64)
    expected = np.array(case["logits"], dtype=np.float64)
    logits = forward(weights, cfg, tokens)
    diff = np.abs(logits - expected).max()
    print(f"max |numpy - mixtrain| = {diff:.3e} over logits of shape {logits.shape}")
    sys.exit(0 if diff < 1e-4 else 1)


if __name__ == "__main__":
    main()
