"""A deliberately naive AbSViT forward, written from SPEC.md with plain tensor ops.

No SDPA, no fused value bias, no shared helpers with the model: the top-down signal goes
through the full qkv projection and only its value third is added, as the spec states.
"""
import torch
import torch.nn.functional as F


def _block(blk, x, td):
    B, N, C = x.shape
    H = blk.attn.num_heads
    h = blk.norm1(x)
    q, k, v = blk.attn.qkv(h).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    if td is not None:
        v = v + blk.attn.qkv(td).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)[2]
    attn = ((q @ k.transpose(-2, -1)) * (C // H) ** -0.5).softmax(dim=-1)
    x = x + blk.attn.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))


def _head(m, tokens):
    pooled = tokens[:, 1:].mean(1) if m.global_pool == "avg" else tokens[:, 0]
    return m.head(m.fc_norm(pooled))


def reference_forward(m, x, prior=None, alpha=1.0):
    """Returns (pass-1 logits, pass-2 logits, unweighted L_var)."""
    emb = m.patch_embed(x)
    emb = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), emb], dim=1) + m.pos_embed

    t = emb
    for blk in m.blocks:
        t = _block(blk, t, None)
    bottom_up = m.norm(t)

    p = m.prompt if prior is None else prior
    cos = (bottom_up / bottom_up.norm(dim=-1, keepdim=True)) @ (p / p.norm())
    h = bottom_up * cos.clamp(0, 1).unsqueeze(-1) * alpha
    tds = {}
    for i in range(len(m.blocks) - 1, -1, -1):
        h = m.decoders[i].linear(h)
        tds[i] = m.decoders[i].linear2(h)

    t, var = emb, 0.0
    for i, blk in enumerate(m.blocks):
        t_in = t
        t = _block(blk, t, tds[i])
        var = var + ((m.decoders[i].linear(t.detach()) - t_in.detach()) ** 2).mean()
    return _head(m, bottom_up), _head(m, m.norm(t)), var
