#!/usr/bin/env python3
"""Writes `cmae-fixture-v1` reference files (see shared FIXTURES.md).

An independent Conditional-MAE forward/backward in PyTorch + timm: the encoder
and decoder use timm's `Block` and `PatchEmbed`, the position embeddings and
patchify follow facebookresearch/mae `models_mae.py`. The same pass is run in
float32 (what the GPU must reproduce) and float64 (the truth for gradients).

`--autocast FILE...` adds to existing fixtures the same pass under PyTorch's
f16 autocast (`torch.autocast("cpu", dtype=torch.float16)`, the loss scaled by
GradScaler's initial 2^16 and the gradients unscaled): `autocast.out.loss`,
`autocast.out.loss_per_shot`, `autocast.out.pred` and `autocast.grad.{param}`.
`cmae check-fixture --precision f16` measures its own f16 error against
PyTorch's, both against the float64 truth.

    python3 -m venv tools/.venv && tools/.venv/bin/pip install torch timm safetensors numpy
    tools/.venv/bin/python tools/make_fixtures.py --suite tests/fixtures
    tools/.venv/bin/python tools/make_fixtures.py --out f.safetensors --img 16 --patch 4 \
        --chans 3 --dim 32 --depth 4 --heads 2 --shots 0:0.75,2:0.5 --seed 7
    tools/.venv/bin/python tools/make_fixtures.py --autocast tests/fixtures/*.safetensors
"""

import argparse
import copy
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import timm.layers
from timm.models.vision_transformer import Block, PatchEmbed
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# The explicit softmax path, so float64 runs exactly the math written down.
timm.layers.set_fused_attn(False)


def sincos_1d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim, grid_size):
    """MAE's table with a zero cls row: first dim/2 encode the column, last dim/2 the row."""
    gh = np.arange(grid_size, dtype=np.float64)
    gw = np.arange(grid_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(gw, gh), axis=0)
    emb = np.concatenate([sincos_1d(dim // 2, grid[0]), sincos_1d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)[None]


class ConditionalMae(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        d, dd = c["embed_dim"], c["decoder_embed_dim"]
        g = c["img_size"] // c["patch_size"]
        ln = lambda n, **kw: nn.LayerNorm(n, eps=1e-6, **kw)
        self.patch_embed = PatchEmbed(c["img_size"], c["patch_size"], c["in_chans"], d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(d, g)).float(), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(d, c["num_heads"], c["mlp_ratio"], qkv_bias=True, norm_layer=ln) for _ in range(c["depth"])]
        )
        self.norm = ln(d)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(dd, g)).float(), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(dd, c["decoder_num_heads"], c["mlp_ratio"], qkv_bias=True, norm_layer=ln) for _ in range(c["decoder_depth"])]
        )
        self.decoder_norm = ln(dd)
        self.decoder_pred = nn.Linear(dd, c["patch_size"] ** 2 * c["in_chans"])
        # Random (not MAE's) init so every parameter and gradient is exercised.
        gen = torch.Generator().manual_seed(c["seed"] + 1)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.1))

    def patchify(self, imgs):
        p = self.c["patch_size"]
        n, ch, h, w = imgs.shape
        x = imgs.reshape(n, ch, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * ch)

    def forward(self, imgs, ids_keep):
        c = self.c
        depth = c["depth"]
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        b, n_patches, d = x.shape
        orig = ids_keep[0]
        dropped = []
        all_ids = torch.arange(n_patches).expand(b, -1)
        keep0 = torch.zeros(b, n_patches, dtype=torch.bool).scatter_(1, orig, True)
        dropped.append(~keep0)
        x = torch.gather(x, 1, orig[..., None].expand(-1, -1, d))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)

        def shot(x, k, orig):
            ids = ids_keep[k]
            vis = torch.gather(x[:, 1:], 1, ids[..., None].expand(-1, -1, x.shape[-1]))
            kept = torch.zeros(b, orig.shape[1], dtype=torch.bool).scatter_(1, ids, True)
            mask = torch.zeros(b, n_patches, dtype=torch.bool)
            mask.scatter_(1, orig, ~kept)
            dropped.append(mask)
            return torch.cat([x[:, :1], vis], dim=1), torch.gather(orig, 1, ids)

        later = {layer: k for k, (layer, _) in enumerate(c["shots"]) if k > 0}
        for i, blk in enumerate(self.blocks):
            if i in later:
                x, orig = shot(x, later[i], orig)
            x = blk(x)
        if depth in later:
            x, orig = shot(x, later[depth], orig)
        x = self.norm(x)

        x = self.decoder_embed(x)
        dd = x.shape[-1]
        full = self.mask_token.expand(b, n_patches, dd).clone()
        # Under autocast x is f16: widened as MAE's torch.cat with the f32 mask tokens does.
        x = x.to(full.dtype)
        full = full.scatter(1, orig[..., None].expand(-1, -1, dd), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

        target = self.patchify(imgs)
        if c["norm_pix_loss"]:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        patch_loss = ((pred - target) ** 2).mean(dim=-1)
        masks = [m.to(pred.dtype) for m in dropped]
        per_shot = torch.stack(
            [(patch_loss * m).sum() / m.sum() if m.sum() > 0 else torch.tensor(float("nan"), dtype=pred.dtype) for m in masks]
        )
        if c["loss_weights"] is None:
            union = sum(masks)
            loss = (patch_loss * union).sum() / union.sum()
        else:
            loss = sum(w * s for w, s, m in zip(c["loss_weights"], per_shot, masks) if m.sum() > 0)
        return loss, per_shot, pred


def make_ids(c, batch, n_patches, gen):
    """MAE's noise-argsort for shot 0; a random subset of the visible tokens at each later shot."""
    ids, n = [], n_patches
    for k, (_, ratio) in enumerate(c["shots"]):
        keep = int(math.floor(n * (1.0 - ratio)))
        noise = torch.rand(batch, n, generator=gen)
        ids.append(torch.argsort(noise, dim=1)[:, :keep].contiguous())
        n = keep
    return ids


def build(c, batch, out_path, adamw):
    torch.manual_seed(c["seed"])
    gen = torch.Generator().manual_seed(c["seed"])
    model = ConditionalMae(c)
    g = c["img_size"] // c["patch_size"]
    imgs = torch.randn(batch, c["in_chans"], c["img_size"], c["img_size"], generator=gen)
    ids = make_ids(c, batch, g * g, gen)

    tensors = {}
    loss, per_shot, pred = model(imgs, ids)
    loss.backward()
    for name, p in model.state_dict().items():
        tensors[name] = p.detach().float().clone().contiguous()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for n, gr in grads.items():
        tensors[f"grad.{n}"] = gr.contiguous()

    m64 = copy.deepcopy(model).double()
    m64.zero_grad()
    loss64, _, _ = m64(imgs.double(), ids)
    loss64.backward()
    for n, p in m64.named_parameters():
        if p.requires_grad:
            tensors[f"grad_f64.{n}"] = p.grad.detach().contiguous()

    # One AdamW step from the stored parameters with the stored f32 gradients.
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in zip(names, params) if p.dim() > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in zip(names, params) if not (p.dim() > 1 and not n.endswith(".bias"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": adamw["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=adamw["lr"], betas=(adamw["beta1"], adamw["beta2"]), eps=adamw["eps"],
    )
    for n, p in zip(names, params):
        p.grad = grads[n].clone()
    opt.step()
    for n, p in zip(names, params):
        tensors[f"adamw.{n}"] = p.detach().clone().contiguous()

    tensors["input.imgs"] = imgs.contiguous()
    for k, i in enumerate(ids):
        tensors[f"shot.{k}.ids_keep"] = i.to(torch.int64).contiguous()
    tensors["out.loss"] = loss.detach().reshape(1).float()
    tensors["out.loss_f64"] = loss64.detach().reshape(1).double()
    tensors["out.loss_per_shot"] = per_shot.detach().float()
    tensors["out.pred"] = pred.detach().contiguous()

    meta_cfg = {k: c[k] for k in [
        "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
        "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "norm_pix_loss", "loss_weights"]}
    meta_cfg["shots"] = [[l, r] for l, r in c["shots"]]
    metadata = {
        "format": "cmae-fixture-v1",
        "config": json.dumps(meta_cfg),
        "adamw": json.dumps(adamw),
        "generator": f"tools/make_fixtures.py (torch {torch.__version__}, timm {timm.__version__}), seed {c['seed']}, batch {batch}",
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_file(tensors, out_path, metadata=metadata)
    size = os.path.getsize(out_path)
    print(f"{out_path}: {size / 1024:.0f} KiB, loss {loss.item():.6f}, per shot {per_shot.tolist()}")


AUTOCAST_LOSS_SCALE = 2.0**16


def add_autocast(path):
    """Adds the f16-autocast pass of the fixture at `path` to it (see the module doc)."""
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    c = json.loads(metadata["config"])
    c["shots"] = [tuple(s) for s in c["shots"]]
    c["seed"] = 0
    model = ConditionalMae(c)
    state = {n: tensors[n] for n in model.state_dict()}
    model.load_state_dict(state)
    imgs = tensors["input.imgs"]
    ids = [tensors[f"shot.{k}.ids_keep"] for k in range(len(c["shots"]))]
    with torch.autocast("cpu", dtype=torch.float16):
        loss, per_shot, pred = model(imgs, ids)
    (loss.float() * AUTOCAST_LOSS_SCALE).backward()
    tensors["autocast.out.loss"] = loss.detach().float().reshape(1)
    tensors["autocast.out.loss_per_shot"] = per_shot.detach().float()
    tensors["autocast.out.pred"] = pred.detach().float().contiguous()
    for n, p in model.named_parameters():
        if p.requires_grad:
            tensors[f"autocast.grad.{n}"] = (p.grad.float() / AUTOCAST_LOSS_SCALE).contiguous()
    metadata["autocast"] = json.dumps(
        {"dtype": "float16", "device": "cpu", "loss_scale": AUTOCAST_LOSS_SCALE, "torch": torch.__version__}
    )
    save_file(tensors, path, metadata=metadata)
    err = abs(loss.item() - tensors["out.loss_f64"].item())
    print(f"{path}: autocast loss {loss.item():.6f} (off the float64 loss by {err:.2e})")


def config(img=16, patch=4, chans=3, dim=24, depth=4, heads=2, mlp=4.0, ddim=16, ddepth=2, dheads=2,
           norm_pix=False, shots=((0, 0.75),), weights=None, seed=0):
    return dict(img_size=img, patch_size=patch, in_chans=chans, embed_dim=dim, depth=depth, num_heads=heads,
                mlp_ratio=mlp, decoder_embed_dim=ddim, decoder_depth=ddepth, decoder_num_heads=dheads,
                norm_pix_loss=norm_pix, shots=[list(s) for s in shots], loss_weights=weights, seed=seed)


ADAMW = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.05}

SUITE = {
    # Plain MAE, L(0; 0.75).
    "one_shot.safetensors": config(seed=1),
    # L(0, 2; 0.75, 0.5) with norm-pix, patch 2, greyscale.
    "two_shots_normpix_p2_gray.safetensors": config(img=8, patch=2, chans=1, shots=((0, 0.75), (2, 0.5)), norm_pix=True, seed=2),
    # L(0, 1, 3; 0.5, 0.25, 0.34) with per-shot loss weights, RGB, patch 4.
    "three_shots_weighted.safetensors": config(img=16, patch=4, shots=((0, 0.5), (1, 0.25), (3, 0.34)), weights=[0.5, 0.3, 0.2], seed=3),
    # A shot after the last block (layer == depth), norm-pix on, mlp ratio 2.
    "shot_after_last_block.safetensors": config(dim=24, heads=3, depth=3, mlp=2.0, shots=((0, 0.6), (3, 0.5)), norm_pix=True, seed=4),
    # Degenerate: no input masking, only shot 2 drops patches (its per-shot loss for shot 0 is NaN).
    "no_input_masking_weighted.safetensors": config(img=8, patch=2, chans=3, shots=((0, 0.0), (2, 0.5)), weights=[0.5, 1.0], seed=5),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", help="write the standard set of fixtures into this directory")
    ap.add_argument("--out", help="write one fixture here")
    ap.add_argument("--img", type=int, default=16)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--chans", type=int, default=3)
    ap.add_argument("--dim", type=int, default=24)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--mlp", type=float, default=4.0)
    ap.add_argument("--ddim", type=int, default=16)
    ap.add_argument("--ddepth", type=int, default=2)
    ap.add_argument("--dheads", type=int, default=2)
    ap.add_argument("--norm-pix", action="store_true")
    ap.add_argument("--shots", default="0:0.75", help="layer:ratio,... e.g. 0:0.75,2:0.5")
    ap.add_argument("--weights", help="per-shot loss weights, e.g. 0.75,0.15")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--autocast", nargs="+", metavar="FILE", help="add the f16-autocast pass to these fixtures")
    a = ap.parse_args()
    for path in a.autocast or []:
        add_autocast(path)
    if a.suite:
        for name, c in SUITE.items():
            build(c, 2, os.path.join(a.suite, name), ADAMW)
    if a.out:
        shots = [(int(l), float(r)) for l, r in (s.split(":") for s in a.shots.split(","))]
        weights = [float(w) for w in a.weights.split(",")] if a.weights else None
        c = config(a.img, a.patch, a.chans, a.dim, a.depth, a.heads, a.mlp, a.ddim, a.ddepth, a.dheads,
                   a.norm_pix, shots, weights, a.seed)
        build(c, a.batch, a.out, ADAMW)
    if not (a.suite or a.out or a.autocast):
        ap.error("give --suite DIR, --out FILE or --autocast FILE...")


if __name__ == "__main__":
    main()
