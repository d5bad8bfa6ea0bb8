#!/usr/bin/env python3
"""PyTorch reference for bench/src/train_step.rs: the same methods, model, batch and measurements.

Methods (as REFERENCE.md §5): backbone forward only, linear probe, full finetuning, LoRA r=8 on
qkv (peft), VPT-deep with 10 prompts, LoSA r = r_t = 8 with the default mixer, LoSA from cached
block outputs, and LoSA through torch.compile (`losa_compiled`: the whole adapted model, default mode;
compilation falls in the warm-up). One step = forward, cross-entropy, backward, AdamW. Median of --steps after
--warmup. Memory: on CUDA the peak reserved (and allocated) memory of the step; on the CPU the
process's peak resident set above the one before the method (reset through /proc/self/clear_refs),
as the Rust benchmark measures it. bf16 autocast on CUDA, f32 on the CPU.
"""
import argparse
import json
import math
import statistics
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

SIZES = {"Ti": (192, 12, 3), "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "H": (1280, 32, 16)}


def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Vpt(nn.Module):
    """Deep VPT: fresh prompts after the class token at every block, dropped after it."""

    def __init__(self, vit, prompts=10):
        super().__init__()
        self.vit, self.p = vit, prompts
        d = vit.embed_dim
        val = math.sqrt(6.0 / (3 * vit.patch_embed.patch_size[0] ** 2 + d))
        self.prompts = nn.Parameter(torch.empty(len(vit.blocks), prompts, d).uniform_(-val, val))

    def forward(self, x):
        v = self.vit
        x = v._pos_embed(v.patch_embed(x))
        for i, blk in enumerate(v.blocks):
            b = x.shape[0]
            x = torch.cat([x[:, :1], self.prompts[i].expand(b, -1, -1), x[:, 1:]], 1)
            x = blk(x)
            x = torch.cat([x[:, :1], x[:, 1 + self.p:]], 1)
        return v.forward_head(v.norm(x))


class Mix(nn.Module):
    def __init__(self, size, rank, d, bias_up=True):
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.down = nn.Linear(size, rank)
        self.up = nn.Linear(rank, size, bias=bias_up)
        nn.init.zeros_(self.up.weight)
        if bias_up:
            nn.init.zeros_(self.up.bias)


class Losa(nn.Module):
    """LoSA's side network with the default mixer (channel then token, LN, GELU)."""

    def __init__(self, vit, rank=8, token_rank=8):
        super().__init__()
        d, n = vit.embed_dim, vit.patch_embed.num_patches + 1
        self.vit = vit
        self.channel = nn.ModuleList(Mix(d, rank, d) for _ in vit.blocks)
        self.token = nn.ModuleList(Mix(n, token_rank, d, bias_up=False) for _ in vit.blocks)
        self.head = nn.Linear(d, vit.num_classes)

    @torch.no_grad()
    def taps(self, x):
        v = self.vit
        x = v._pos_embed(v.patch_embed(x))
        outs = []
        for blk in v.blocks:
            x = blk(x)
            outs.append(x)
        return outs

    def side(self, outs):
        y = outs[-1]
        for b, c, t in zip(outs, self.channel, self.token):
            z = b + y
            h = z + c.up(F.gelu(c.down(c.norm(z))))
            h = h + t.up(F.gelu(t.down(t.norm(h).transpose(1, 2)))).transpose(1, 2)
            y = y + (h - z)
        y = F.layer_norm(y, (y.shape[-1],), self.vit.norm.weight.detach(), self.vit.norm.bias.detach(), 1e-6)
        return self.head(y[:, 1:].mean(1))

    def forward(self, x):
        return self.side(self.taps(x))


def build(name, vit):
    """The method's model (or forward function) and trainable parameters, on the backbone's device."""
    dev = next(vit.parameters()).device
    for p in vit.parameters():
        p.requires_grad_(name == "full")
    if name == "linear_probe":
        head = nn.Linear(vit.embed_dim, vit.num_classes).to(dev)

        def fwd(x):
            with torch.no_grad():
                f = vit.forward_features(x)[:, 0]
            return head(f.float())
        return fwd, list(head.parameters())
    if name == "full":
        return vit, list(vit.parameters())
    if name == "lora":
        import peft
        model = peft.get_peft_model(vit, peft.LoraConfig(r=8, lora_alpha=8, target_modules=["qkv"], modules_to_save=["head"]))
        return model, [p for p in model.parameters() if p.requires_grad]
    if name == "vpt":
        model = Vpt(vit).to(dev)
        for p in model.vit.head.parameters():
            p.requires_grad_(True)
        return model, [model.prompts] + list(model.vit.head.parameters())
    if name in ("losa", "losa_cached", "losa_compiled"):
        model = Losa(vit).to(dev)
        params = [p for n, p in model.named_parameters() if not n.startswith("vit.")]
        return (torch.compile(model) if name == "losa_compiled" else model), params
    raise SystemExit(f"unknown method {name}")


def measure(name, a, d, depth, heads, patch, dev, cuda, images, labels, timed):
    """One method: median train step, inference forward of the adapted model, peak memory."""
    vit = VisionTransformer(img_size=a.image_size, patch_size=patch, embed_dim=d, depth=depth, num_heads=heads,
                            num_classes=100).to(dev)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    reset_peak()
    base = rss("VmRSS:")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    if name == "forward":
        vit.eval()

        def step():
            with torch.no_grad(), autocast:
                vit.forward_features(images)
        trainable = 0
        infer = step
    else:
        model, params = build(name, vit)
        trainable = sum(p.numel() for p in params)
        opt = torch.optim.AdamW(params, lr=1e-4)
        cached = None
        if name == "losa_cached":
            with autocast:
                cached = model.taps(images)

        def step():
            with autocast:
                logits = model.side(cached) if cached is not None else model(images)
                loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def infer():  # as deployed: from images, also for a method trained from cache
            with torch.no_grad(), autocast:
                model(images)
    seconds = timed(step)
    infer_seconds = timed(infer)
    if cuda:
        peak, allocated = torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated()
    else:
        peak, allocated = max(rss("VmHWM:") - base, 0), None
    print(f"{name:<14} {seconds * 1e3:>10.1f} {a.batch / seconds:>10.1f} {peak / 2**20:>12.1f} {trainable:>14} "
          f"{infer_seconds * 1e3:>10.1f}")
    return {"method": name, "step_ms": seconds * 1e3, "images_per_s": a.batch / seconds, "peak_bytes": peak,
            "peak_allocated_bytes": allocated, "trainable": trainable, "infer_ms": infer_seconds * 1e3}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="B/16")
    ap.add_argument("--patch-size", type=int)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default="forward,linear_probe,full,lora,vpt,losa,losa_cached")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    size, patch = a.variant.split("/")
    d, depth, heads = SIZES[size]
    patch = a.patch_size or int(patch)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    images = torch.randn(a.batch, 3, a.image_size, a.image_size, device=dev)
    labels = torch.arange(a.batch, device=dev) % 100

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(step):
        for _ in range(a.warmup):
            step()
        sync()
        times = []
        for _ in range(a.steps):
            t = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    print(f"# torch {torch.__version__} train step: ViT width {d} depth {depth} patch {patch} at {a.image_size} px, "
          f"batch {a.batch}, {'bf16 autocast' if cuda else 'f32'} on {dev}, median of {a.steps} steps")
    print(f"{'method':<14} {'step ms':>10} {'images/s':>10} {'peak MiB':>12} {'trainable':>14} {'infer ms':>10}")
    rows = []
    for name in a.methods.split(","):
        try:
            rows.append(measure(name, a, d, depth, heads, patch, dev, cuda, images, labels, timed))
        except torch.cuda.OutOfMemoryError:  # recorded as such; the other methods go on
            print(f"{name:<14} out of memory")
            rows.append({"method": name, "error": "out of memory"})
        except Exception as e:  # e.g. torch.compile failing on this machine: recorded, the others go on
            print(f"{name:<14} failed: {type(e).__name__}: {e}")
            traceback.print_exc()  # to stderr, which the benchmark scripts keep in a log
            rows.append({"method": name, "error": f"failed ({type(e).__name__})"})
        if cuda:
            torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"tool": f"torch {torch.__version__}", "device": str(dev), "width": d, "depth": depth,
                       "patch": patch, "image_size": a.image_size, "batch": a.batch, "steps": a.steps,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
