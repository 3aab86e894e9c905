"""What the appendix figures show, computed: every scene's attention maps (bottom-up, top-down per object prior and
alpha, the ViT baseline's) and the Fig. 4 decoder's reconstructions, from the AbSViT and ViT checkpoints."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from absvit.data.scenes import load_mask
from absvit.errors import UsageError
from absvit.evaluate import load_model
from absvit.figures.decoder import LinearDecoder, patch_tokens
from absvit.figures import scores
from absvit.figures.scores import region_mse
from absvit.models import AbSViT, block_attention, vit_attention_map

CHUNK = 64  # images per forward pass


def chunked(fn, x, priors=None):
    """``fn(images, priors)`` over chunks of ``CHUNK`` images, concatenated (per output of a tuple)."""
    outs = [fn(x[i:i + CHUNK], None if priors is None else priors[i:i + CHUNK]) for i in range(0, len(x), CHUNK)]
    return [torch.cat(o) for o in zip(*outs)] if isinstance(outs[0], tuple) else torch.cat(outs)


def short_class_names(classes: list[str]) -> list[str]:
    """Short display names: the embedded shapes, ImageNet's first synonym, else the folder name."""
    from absvit.data.shapes import SHAPE_WORDS
    from absvit.data.synthetic import SHAPES, WNIDS

    embedded = {w: SHAPE_WORDS[s] for w, s in zip(WNIDS, SHAPES)}
    if all(c in embedded for c in classes):
        return [embedded[c] for c in classes]
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        index = {w: i for i, w in enumerate(info.label_names())}
        return [info.index_to_description(index[c]).split(",")[0] if c in index else c for c in classes]
    except Exception:  # noqa: BLE001  (no names: the wnids)
        return list(classes)


def load_scene(scene, size: int, mean, std):
    """(RGB array (S, S, 3) in [0, 1], normalised tensor (3, S, S), [mask (S, S) or None per object])."""
    with Image.open(scene.image) as im:
        rgb = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    x = (torch.from_numpy(rgb).permute(2, 0, 1) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return rgb, x.float(), [load_mask(o.mask, size) for o in scene.objects]


def load_models(absvit_checkpoint, vit_checkpoint, absvit_model, vit_model, decoder_path):
    """The AbSViT and its plain-ViT baseline (eval mode), the AbSViT's Fig. 4 decoder, its classes and input sizes, and
    the seed and MLflow run that made its weights; each file checked to be what its flag says."""
    absvit, classes, a_size, ckpt = load_model(absvit_checkpoint, model_name=absvit_model)
    vit, _, v_size, _ = load_model(vit_checkpoint, model_name=vit_model)
    if not isinstance(absvit, AbSViT):
        raise UsageError(f"--absvit-checkpoint {absvit_checkpoint}: a {type(absvit).__name__}, not an AbSViT model")
    if isinstance(vit, AbSViT):
        raise UsageError(f"--vit-checkpoint {vit_checkpoint}: an AbSViT; give a plain ViT (the bottom-up baseline)")
    decoder = LinearDecoder.load(decoder_path)
    if decoder.model != absvit.pretrained_cfg["architecture"] or decoder.weight.shape[1] != absvit.embed_dim:
        raise UsageError(f"--decoder {decoder_path}: fitted for {decoder.model or 'another model'}, "
                         f"not {absvit.pretrained_cfg['architecture']} (run `absvit decoder` on this checkpoint)")
    source = {"seed": (ckpt.get("run") or {}).get("recipe", {}).get("seed"),  # a released file has none
              "source_run_id": ckpt.get("mlflow_run_id")}  # the pretraining run that wrote it
    return absvit.eval(), vit.eval(), decoder, classes, a_size, v_size, source


def analyse(absvit, vit, decoder, scenes, *, a_size: int, v_size: int, alphas, prior_scale: float,
            show: int) -> dict:
    """Every map and reconstruction error per scene, (scene, object) pair and alpha (``alphas``, ``prior_scale``,
    and ``-prior_scale``: the control with the prior's sign flipped); decoded images (at ``prior_scale``) only for
    the first ``show`` scenes, which the figures draw; each model's attention locality per block (bottom-up)."""
    cfg = absvit.pretrained_cfg
    loaded = [load_scene(s, a_size, cfg["mean"], cfg["std"]) for s in scenes]
    vit_in = loaded if v_size == a_size else [load_scene(s, v_size, vit.pretrained_cfg["mean"],
                                                          vit.pretrained_cfg["std"]) for s in scenes]
    x = torch.stack([t for _, t, _ in loaded])
    masks = [m for _, _, m in loaded]
    grid = absvit.patch_embed.grid_size
    pairs = [(i, k) for i, s in enumerate(scenes) for k in range(len(s.objects))]
    xp = x[[i for i, _ in pairs]]
    priors = torch.tensor([scenes[i].objects[k].class_index for i, k in pairs])
    kept = [n for n, (i, _) in enumerate(pairs) if i < show]

    def errors(recon):  # (inside, outside) per pair, None without a mask
        return [None if masks[i][k] is None else region_mse(rec.numpy(), xp[n].numpy(), masks[i][k])
                for n, ((i, k), rec) in enumerate(zip(pairs, recon))]

    with torch.no_grad():
        bu = chunked(lambda b, _: absvit.attention_map(b, top_down=False), x).numpy()
        vmap = chunked(lambda b, _: vit_attention_map(vit, b), torch.stack([t for _, t, _ in vit_in])).numpy()
        x0_bu = chunked(lambda b, _: patch_tokens(absvit, absvit.first_layer_inputs(b, top_down=False)[0]), xp)
        mse_bu = errors(decoder.decode(x0_bu, grid))
        td, mse, dec = {}, {}, {}
        locality = {name: [scores.locality(w, model.patch_embed.grid_size, model.num_prefix_tokens)
                           for w in block_attention(model, inputs)]
                    for name, model, inputs in (("absvit", absvit, x), ("vit", vit, torch.stack([t for _, t, _ in vit_in])))}
        for a in sorted(set(alphas) | {prior_scale, -prior_scale}):
            td[a] = chunked(lambda b, p: absvit.attention_map(b, prior=p, alpha=a), xp, priors).numpy()
            t_ = patch_tokens(absvit, chunked(lambda b, p: absvit.first_layer_inputs(b, prior=p, alpha=a)[1], xp, priors))
            mse[a] = errors(decoder.decode(x0_bu + t_, grid))
            if a == prior_scale:
                dec = {"bu": x0_bu[kept], "td": t_[kept], "sum": x0_bu[kept] + t_[kept]}
    decoded = {k: decoder.to_rgb(decoder.decode(v, grid)).permute(0, 2, 3, 1).numpy() for k, v in dec.items()}
    return {"rgb": [r for r, _, _ in loaded], "masks": masks, "vit_masks": [m for _, _, m in vit_in], "pairs": pairs,
            "bu": bu, "vit": vmap, "td": td, "mse_bu": mse_bu, "mse": mse, "locality": locality,
            "decoded": {k: {pairs[n]: v[j] for j, n in enumerate(kept)} for k, v in decoded.items()}}
