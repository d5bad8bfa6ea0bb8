#!/usr/bin/env python3
"""Make the ViT parity fixtures in framework/fixtures/vit/ (run by hand, not in CI).

Needs PyTorch, timm, transformers, safetensors and numpy:
    python3 -m venv /opt/fx && /opt/fx/bin/pip install torch timm transformers safetensors numpy
    /opt/fx/bin/python tools/make_fixtures.py

Writes tiny random ViTs in every checkpoint layout the framework reads, and the reference outputs
that timm (and transformers, for the HF layout) compute for fixed input images:
- vit_timm.safetensors       timm state dict (every tensor random, norms and biases included)
- vit_google.npz             the same weights in Google's vit_jax layout, plus a pre_logits layer
- vit_google_opt.npz         vit_jax layout under the opt/target/ prefix, arrays in Fortran order
- vit_bigvision.npz          big_vision layout (params/ prefix, _0/_1 sub-module numbering)
- vit_bigvision_scan.npz     big_vision layout with the blocks stacked on a leading axis (scan)
- vit_hf.safetensors         an HF transformers ViTForImageClassification of the same size
                             (transformers 5 key names: layers.{i}.attention.q_proj, ...)
- vit_hf_legacy.safetensors  the same weights under the names of transformers 4 and the hub's
                             checkpoints (encoder.layer.{i}.attention.attention.query, ...)
- images/*.png               three 32×32 RGB images for `runner embed`
- peft/                      a PEFT LoRA adapter (qkv, proj and fc2 of every block, rank 4, the head
                             trained too) on vit_timm.safetensors, with every LoRA weight random
- reference.safetensors      inputs and outputs (see the `ref[...]` keys below)
- ../optim.json              PyTorch's AdamW and SGD trajectories (also alone: OPTIM_ONLY=1)
Each .npz is checked by loading it with timm's own npz loader and comparing every parameter with
the timm model's; the HF file is checked by reloading it with transformers.
"""
import os
import sys
import tempfile

import numpy as np
import timm
import torch
import transformers
from safetensors.torch import save_file, load_file
from timm.models.vision_transformer import VisionTransformer, _load_weights, checkpoint_filter_fn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "framework", "fixtures", "vit")
D, DEPTH, HEADS, MLP, PATCH, SIZE, CLASSES = 48, 2, 3, 96, 8, 32, 5
torch.manual_seed(0)
np.random.seed(0)


def timm_vit(img_size, num_classes=CLASSES):
    return VisionTransformer(img_size=img_size, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                             mlp_ratio=MLP / D, num_classes=num_classes, global_pool="token").eval()


def randomise(model):
    # Every tensor random (not timm's zero biases and unit norms), so a mix-up anywhere shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "norm" in name and name.endswith("weight") else 0.2)
                    + (1.0 if "norm" in name and name.endswith("weight") else 0.0))


def outputs(model, images, tag, ref):
    blocks = []
    hooks = [b.register_forward_hook(lambda m, i, o: blocks.append(o.detach().clone())) for b in model.blocks]
    with torch.no_grad():
        tokens = model.forward_features(images)
        ref[f"{tag}.tokens"] = tokens
        ref[f"{tag}.pool_token"] = tokens[:, 0]
        ref[f"{tag}.pool_mean"] = tokens[:, 1:].mean(1)
        if model.num_classes:
            ref[f"{tag}.logits"] = model.forward_head(tokens)
    for h in hooks:
        h.remove()
    for i, b in enumerate(blocks):
        ref[f"{tag}.block{i}"] = b


def to_google(sd, prefix="", big_vision=False, scan=False, pre_logits=None, fortran=False):
    """timm state dict -> Google npz arrays (the inverse of timm's _load_weights)."""
    n = lambda t: t.detach().cpu().numpy().astype(np.float32)
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
    w = {
        "embedding/kernel": n(sd["patch_embed.proj.weight"]).transpose(2, 3, 1, 0),
        "embedding/bias": n(sd["patch_embed.proj.bias"]),
        "cls": n(sd["cls_token"]),
        ("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"): n(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": n(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": n(sd["norm.bias"]),
        "head/kernel": n(sd["head.weight"]).T,
        "head/bias": n(sd["head.bias"]),
    }
    blocks = []
    for i in range(DEPTH):
        b, hd = {}, D // HEADS
        a = f"MultiHeadDotProductAttention_{mha}"
        qkv_w, qkv_b = n(sd[f"blocks.{i}.attn.qkv.weight"]), n(sd[f"blocks.{i}.attn.qkv.bias"])
        for j, part in enumerate(["query", "key", "value"]):
            b[f"{a}/{part}/kernel"] = qkv_w[j * D:(j + 1) * D].T.reshape(D, HEADS, hd)
            b[f"{a}/{part}/bias"] = qkv_b[j * D:(j + 1) * D].reshape(HEADS, hd)
        b[f"{a}/out/kernel"] = n(sd[f"blocks.{i}.attn.proj.weight"]).T.reshape(HEADS, hd, D)
        b[f"{a}/out/bias"] = n(sd[f"blocks.{i}.attn.proj.bias"])
        b["LayerNorm_0/scale"] = n(sd[f"blocks.{i}.norm1.weight"])
        b["LayerNorm_0/bias"] = n(sd[f"blocks.{i}.norm1.bias"])
        b[f"LayerNorm_{ln2}/scale"] = n(sd[f"blocks.{i}.norm2.weight"])
        b[f"LayerNorm_{ln2}/bias"] = n(sd[f"blocks.{i}.norm2.bias"])
        for r, fc in enumerate(["fc1", "fc2"]):
            b[f"MlpBlock_{mlp}/Dense_{r}/kernel"] = n(sd[f"blocks.{i}.mlp.{fc}.weight"]).T
            b[f"MlpBlock_{mlp}/Dense_{r}/bias"] = n(sd[f"blocks.{i}.mlp.{fc}.bias"])
        blocks.append(b)
    if scan:
        for k in blocks[0]:
            w[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
    else:
        for i, b in enumerate(blocks):
            for k, v in b.items():
                w[f"Transformer/encoderblock_{i}/{k}"] = v
    if pre_logits is not None:
        w["pre_logits/kernel"] = n(pre_logits.weight).T
        w["pre_logits/bias"] = n(pre_logits.bias)
    # np.savez keeps a transposed array's Fortran order; Google's files are C order.
    order = np.asfortranarray if fortran else np.ascontiguousarray
    return {prefix + k: order(v) for k, v in w.items()}


def legacy_name(key):
    """transformers 5 ViT key -> transformers 4 / hub checkpoint key."""
    for new, old in [(".layers.", ".encoder.layer."), ("attention.q_proj", "attention.attention.query"),
                     ("attention.k_proj", "attention.attention.key"), ("attention.v_proj", "attention.attention.value"),
                     ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                     ("mlp.fc2", "output.dense")]:
        key = key.replace(new, old)
    return key


def check_npz(path, sd, prefix=""):
    """Load with timm's own npz loader; every parameter must equal the original."""
    model = timm_vit(SIZE)
    _load_weights(model, path, prefix=prefix)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), f"{path}: {k} differs after timm's npz loader"


def main():
    os.makedirs(OUT, exist_ok=True)
    ref = {}
    images = torch.randn(2, 3, SIZE, SIZE)
    ref["images"] = images
    ref["images48"] = torch.randn(2, 3, 48, 48)
    ref["images16"] = torch.randn(2, 3, 16, 16)

    model = timm_vit(SIZE)
    randomise(model)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(OUT, "vit_timm.safetensors"))
    outputs(model, images, "timm", ref)

    # Position embedding resampled up (4x4 -> 6x6) and down (4x4 -> 2x2) as timm does on load.
    for size in (48, 16):
        big = timm_vit(size)
        big.load_state_dict(checkpoint_filter_fn(load_file(os.path.join(OUT, "vit_timm.safetensors")), big))
        outputs(big, ref[f"images{size}"], f"timm{size}", ref)

    # Google layouts, each checked with timm's npz loader.
    pre_logits = torch.nn.Linear(D, D)
    with torch.no_grad():
        pre_logits.weight.normal_(0, 0.2)
        pre_logits.bias.normal_(0, 0.2)
    for name, kwargs in [("vit_google.npz", dict(pre_logits=pre_logits)),
                         ("vit_google_opt.npz", dict(prefix="opt/target/", fortran=True)),
                         ("vit_bigvision.npz", dict(prefix="params/", big_vision=True)),
                         ("vit_bigvision_scan.npz", dict(prefix="params/", big_vision=True, scan=True))]:
        path = os.path.join(OUT, name)
        np.savez(path, **to_google(sd, **kwargs))
        check_npz(path, sd, kwargs.get("prefix", ""))
    with torch.no_grad():
        f = ref["timm.pool_token"]
        ref["npz.pre_logits_logits"] = model.head(torch.tanh(pre_logits(f)))
    # timm's npz loader resamples bilinearly (no antialias).
    big = timm_vit(48)
    _load_weights(big, os.path.join(OUT, "vit_google.npz"))
    outputs(big, ref["images48"], "npz48", ref)

    # HF transformers ViT of the same size, checked by reloading with transformers.
    cfg = transformers.ViTConfig(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                 intermediate_size=MLP, image_size=SIZE, patch_size=PATCH, num_labels=CLASSES,
                                 layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True)
    hf = transformers.ViTForImageClassification(cfg).eval()
    randomise(hf)
    hf_sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(hf_sd, os.path.join(OUT, "vit_hf.safetensors"), metadata={"format": "pt"})
    again = transformers.ViTForImageClassification(cfg).eval()
    again.load_state_dict(load_file(os.path.join(OUT, "vit_hf.safetensors")))
    with torch.no_grad():
        out = again(pixel_values=images, output_hidden_states=True)
        direct = hf(pixel_values=images).logits
    assert torch.allclose(out.logits, direct), "transformers does not reproduce its own checkpoint"
    for i in range(DEPTH):
        ref[f"hf.block{i}"] = out.hidden_states[i + 1]
    with torch.no_grad():
        tokens = again.vit(pixel_values=images).last_hidden_state
    ref["hf.tokens"] = tokens
    ref["hf.logits"] = out.logits

    # The legacy layout, checked by letting transformers load it from a folder with its config.
    legacy = {legacy_name(k): v for k, v in hf_sd.items()}
    save_file(legacy, os.path.join(OUT, "vit_hf_legacy.safetensors"), metadata={"format": "pt"})
    with tempfile.TemporaryDirectory() as tmp:
        cfg.save_pretrained(tmp)
        save_file(legacy, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        loaded = transformers.ViTForImageClassification.from_pretrained(tmp).eval()
        with torch.no_grad():
            assert torch.allclose(loaded(pixel_values=images).logits, out.logits, atol=1e-6), \
                "transformers reads the legacy layout differently"

    # `runner embed` on PNGs already at the model's size (no resampling): timm's features after the
    # final norm, pooled, and its logits, with inception normalisation (x / 127.5 - 1).
    from PIL import Image
    folder = os.path.join(OUT, "images")
    os.makedirs(folder, exist_ok=True)
    pixels = np.random.RandomState(1).randint(0, 256, size=(3, SIZE, SIZE, 3), dtype=np.uint8)
    for name, px in zip(["b.png", "a.png", "c.png"], pixels):
        Image.fromarray(px).save(os.path.join(folder, name))
    files = sorted(os.listdir(folder))
    batch = torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(folder, f)).convert("RGB"))) for f in files])
    batch = batch.permute(0, 3, 1, 2).float() / 255.0
    batch = (batch - 0.5) / 0.5
    with torch.no_grad():
        tokens = model.forward_features(batch)
        ref["embed.token"] = tokens[:, 0]
        ref["embed.mean"] = tokens[:, 1:].mean(1)
        ref["embed.logits"] = model.forward_head(tokens)

    # A real PEFT LoRA adapter on the timm model; its logits are what importing it must reproduce.
    import peft
    base = timm_vit(SIZE)
    base.load_state_dict(sd)
    lora = peft.LoraConfig(r=4, lora_alpha=6, target_modules=["attn.qkv", "attn.proj", "mlp.fc2"], modules_to_save=["head"],
                           lora_dropout=0.0)
    pm = peft.get_peft_model(base, lora).eval()
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn_like(p) * 0.3)
        ref["peft.logits"] = pm(images)
    pm.save_pretrained(os.path.join(OUT, "peft"))
    os.remove(os.path.join(OUT, "peft", "README.md")) if os.path.exists(os.path.join(OUT, "peft", "README.md")) else None

    save_file({k: v.contiguous().float() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"),
              metadata={"torch": torch.__version__, "timm": timm.__version__,
                        "transformers": transformers.__version__, "script": "tools/make_fixtures.py"})
    optimizer_fixture()
    for f in sorted(os.listdir(OUT)):
        print(f"{f:28s} {os.path.getsize(os.path.join(OUT, f)):>8d} bytes", file=sys.stderr)




def optimizer_fixture():
    """framework/fixtures/optim.json: PyTorch's AdamW and SGD trajectories on fixed gradients,
    with one decayed and one undecayed parameter, a changing learning rate and gradient clipping."""
    import json
    out = {}
    grads = [[[0.3 * (i + 1) * (-1) ** j for j in range(6)], [0.5 - 0.2 * i, 0.1 * i, -0.7]] for i in range(5)]
    lrs = [0.02, 0.05, 0.1, 0.07, 0.01]
    for name, make in [
        ("adamw", lambda groups: torch.optim.AdamW(groups, lr=lrs[0], betas=(0.9, 0.999), eps=1e-8)),
        ("sgd", lambda groups: torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)),
    ]:
        for clip in [None, 1.0]:
            w = torch.nn.Parameter(torch.tensor([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]], dtype=torch.float64))
            b = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
            opt = make([{"params": [w], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}])
            steps = []
            for g, lr in zip(grads, lrs):
                for group in opt.param_groups:
                    group["lr"] = lr
                w.grad = torch.tensor(g[0], dtype=torch.float64).reshape(2, 3)
                b.grad = torch.tensor(g[1], dtype=torch.float64)
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_([w, b], clip)
                opt.step()
                steps.append({"w": w.detach().flatten().tolist(), "b": b.detach().tolist()})
            out[f"{name}{'_clip' if clip else ''}"] = {"steps": steps}
    out["grads"] = grads
    out["lrs"] = lrs
    out["init"] = {"w": [0.5, -1.0, 2.0, 0.1, 0.2, -0.3], "b": [1.0, -2.0, 0.5]}
    out["note"] = "torch " + torch.__version__ + "; weight_decay 0.05 on w only; tools/make_fixtures.py"
    path = os.path.join(OUT, "..", "optim.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    optimizer_fixture() if os.environ.get("OPTIM_ONLY") else main()
