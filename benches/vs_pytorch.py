"""The PyTorch eager side of `cargo bench --bench vs_pytorch`.

The same GPT as mixtrain's (src/model.rs): byte vocabulary (257), token embedding tied to the
LM head, pre-norm RMSNorm blocks, causal self-attention with RoPE (GPT-NeoX half-split), an
MLP (GELU or SwiGLU), no biases; AdamW with decoupled weight decay on matrices and
embeddings, global-norm clipping, fp32. Batches are windows of real text (the quickstart
corpus as bytes), as mixtrain trains on.

Protocol (the Rust bench drives it, so the two trainers run interleaved in one run): the
script prints "ready" after building the model and taking warm-up steps; then each line
"STEPS" on stdin runs that many training steps and answers "<ms per step>"; "quit" ends it.

    python3 benches/vs_pytorch.py --d-model 128 --n-layers 4 --n-heads 4 --d-ff 512 --mlp gelu
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RmsNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):
    # x: [batch, heads, seq, head_dim]; cos, sin: [seq, head_dim / 2]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, args):
        super().__init__()
        d, f = args.d_model, args.d_ff
        self.n_heads = args.n_heads
        self.attn_norm = RmsNorm(d, 1e-5)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.mlp_norm = RmsNorm(d, 1e-5)
        self.gate_proj = nn.Linear(d, f, bias=False) if args.mlp == "swiglu" else None
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, d = x.shape
        hd = d // self.n_heads
        h = self.attn_norm(x)
        heads = lambda y: y.view(b, t, self.n_heads, hd).transpose(1, 2)
        q = rope(heads(self.q_proj(h)), cos, sin)
        k = rope(heads(self.k_proj(h)), cos, sin)
        v = heads(self.v_proj(h))
        # Written out as mixtrain does it (no fused attention kernel): [b, heads, t, t]
        scores = q @ k.transpose(2, 3) / math.sqrt(hd) + mask
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.o_proj(out)
        h = self.mlp_norm(x)
        up = self.up_proj(h)
        hidden = F.silu(self.gate_proj(h)) * up if self.gate_proj is not None else F.gelu(up)
        return x + self.down_proj(hidden)


class Gpt(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.tok_emb = nn.Embedding(args.vocab, args.d_model)
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm_f = RmsNorm(args.d_model, 1e-5)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * args.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
        hd = args.d_model // args.n_heads
        freq = args.rope_theta ** (-torch.arange(0, hd // 2, dtype=torch.float64) * 2 / hd)
        angle = torch.arange(args.seq_len, dtype=torch.float64)[:, None] * freq[None, :]
        self.register_buffer("cos", angle.cos().float())
        self.register_buffer("sin", angle.sin().float())
        mask = torch.full((args.seq_len, args.seq_len), -1e9).triu(1)
        self.register_buffer("mask", mask)

    def forward(self, tokens):
        x = self.tok_emb(tokens)
        for block in self.blocks:
            x = block(x, self.cos, self.sin, self.mask)
        return self.norm_f(x) @ self.tok_emb.weight.t()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=257)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--mlp", choices=["gelu", "swiglu"], default="gelu")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rope-theta", type=float, default=10000.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--corpus", default="data/quickstart/prose.jsonl")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with open(args.corpus, encoding="utf-8") as f:
        text = "".join(json.loads(line)["text"] for line in f if line.strip())
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    model = Gpt(args)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    generator = torch.Generator().manual_seed(0)
    window = args.seq_len + 1

    def step():
        starts = torch.randint(0, len(data) - window, (args.batch_size,), generator=generator)
        batch = torch.stack([data[s : s + window] for s in starts.tolist()])
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), targets.reshape(-1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    print(f"ready torch {torch.__version__} threads {torch.get_num_threads()}", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if line == "quit":
            break
        steps = int(line)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        print(f"{(time.perf_counter() - start) * 1e3 / steps:.3f}", flush=True)


if __name__ == "__main__":
    main()
