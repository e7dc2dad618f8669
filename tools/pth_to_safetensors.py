#!/usr/bin/env python3
"""Converts a PyTorch checkpoint (official MAE `mae_pretrain_vit_*.pth`, a timm
ViT state dict, or an MAE fine-tuned checkpoint) to .safetensors for cmae.

The tensor names already match cmae's (timm/MAE names), so this only unwraps
the `model` entry MAE checkpoints use, drops non-tensor entries and writes
float32 contiguous tensors. cmae infers the shapes from the tensors (one
attention head per 64 dimensions, as ViT-S/B/L).

    tools/.venv/bin/python tools/pth_to_safetensors.py mae_pretrain_vit_base.pth mae_vit_b.safetensors
    cmae finetune --checkpoint mae_vit_b.safetensors --data folder:/data/imagenet100 --epochs 100
"""

import argparse
import os

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="the .pth file")
    ap.add_argument("dst", help="the .safetensors file to write")
    a = ap.parse_args()
    ckpt = torch.load(a.src, map_location="cpu", weights_only=True)
    state = ckpt.get("model", ckpt.get("state_dict", ckpt)) if isinstance(ckpt, dict) else ckpt
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items() if torch.is_tensor(v)}
    if "patch_embed.proj.weight" not in tensors:
        raise SystemExit(f"{a.src}: no patch_embed.proj.weight; not a ViT/MAE checkpoint")
    save_file(tensors, a.dst, metadata={"source": os.path.basename(a.src)})
    print(f"{a.dst}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
