"""The appendix figures (Figs. 1, 3, 4) as a stage: top-down attention you can see and measure.

- Fig. 1: per scene, the image, the bottom-up attention and the top-down attention for each object's prior (a
  class prior = that class's head row, its mask scaled by ``prior_scale``, 40 as in the official demo).
- Fig. 3: the feedback scale alpha swept (default 1, 2, 5, 10, 40) with the prior on one object.
- Fig. 4: image | decode(x0_bu) | decode(x0_td) | decode(x0_bu + x0_td) per object prior, with the linear decoder
  of ``absvit decoder``.

A map is the per-patch L2 norm of the tokens after the first 3/4 of the blocks (9 of 12 as in the official demo; 3
of the embedded models' 4: ``map_depth``; ``AbSViT.attention_map``; for the plain ViT baseline the same blocks'
output), shown as ``clamp(map - (0.7 max + 0.3 min), 0)`` scaled to [0, 1].

Modules, the way the data flows: ``decoder`` (fit the Fig. 4 decoder), ``maps`` (load the models and scenes,
compute every map and reconstruction), ``scores`` (pure functions of a map and a mask), ``draw`` (the panel grids),
``run`` (the ``absvit figures`` verb: figures, score tables, MLflow). This module registers the verbs and imports
nothing heavy: the CLI builds every parser.
"""
from __future__ import annotations

from absvit.arguments import tracking_arguments

ALPHAS = (1.0, 2.0, 5.0, 10.0, 40.0)  # Fig. 3's sweep of the feedback scale
PRIOR_SCALE = 40.0  # alpha of Figs. 1 and 4: the official demo's scale of a class prior's mask

def add_verbs(verbs, data) -> None:
    """The stage's verbs: ``data embedded-scenes``, ``decoder`` and ``figures`` (``verbs``: the CLI's verbs, ``data``:
    the ``data`` verb's sub-verbs)."""

    def scenes(a):
        from absvit.data.scenes import generate_scenes

        generate_scenes(a.out, seed=a.seed, count=a.count, size=a.size)

    p = data.add_parser("embedded-scenes", help="multi-object scenes for the appendix figures: images, masks, manifest.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--size", type=int, default=64)
    p.set_defaults(func=scenes)

    def decoder(a):
        from absvit.figures.decoder import train_decoder

        train_decoder(a.checkpoint, a.data, a.out, model_name=a.model, max_images=a.max_images or None,
                      batch_size=a.batch_size, workers=a.workers, seed=a.seed)

    p = verbs.add_parser("decoder", help="fit the appendix Fig. 4 linear decoder (first-layer tokens -> patch pixels)")
    p.add_argument("--checkpoint", required=True, help="the AbSViT's weights (pretraining model.pth or a released file)")
    p.add_argument("--model", default=None, help="timm name (default: the one the checkpoint records)")
    p.add_argument("--data", required=True, help="the pretraining images: a train folder <wnid>/*")
    p.add_argument("--out", required=True, help="decoder file (.pth)")
    p.add_argument("--max-images", type=int, default=1000, help="fit on a fixed random subset of N images (0: all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=decoder)

    def figures(a):
        from absvit.figures.run import make_figures

        make_figures(a.absvit_checkpoint, a.vit_checkpoint, a.decoder, a.scenes, a.out_dir, absvit_model=a.absvit_model,
                     vit_model=a.vit_model, alphas=a.alphas, prior_scale=a.prior_scale, show=a.show, width=a.width,
                     label=a.label, tracking_uri=a.tracking_uri, track=not a.no_mlflow, run_name=a.run_name,
                     preset=a.preset, run=a.run)

    p = verbs.add_parser("figures", help="appendix Figs. 1, 3, 4 (PNG + PDF) and their scores (figures.csv/md/tex/json)")
    p.add_argument("--absvit-checkpoint", required=True)
    p.add_argument("--absvit-model", default=None, help="timm name (default: the one the checkpoint records)")
    p.add_argument("--vit-checkpoint", required=True, help="a plain ViT of the same size: the bottom-up baseline")
    p.add_argument("--vit-model", default=None)
    p.add_argument("--decoder", required=True, help="the Fig. 4 decoder file of `absvit decoder` for this AbSViT")
    p.add_argument("--scenes", required=True, help="a folder with manifest.csv (image, object, class_index, mask)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS), help="Fig. 3 sweep (default: %(default)s)")
    p.add_argument("--prior-scale", type=float, default=PRIOR_SCALE, help="alpha of Figs. 1 and 4 (class priors)")
    p.add_argument("--show", type=int, default=4, help="scenes drawn (all are scored)")
    p.add_argument("--width", type=float, default=7.0, help="figure width in inches")
    p.add_argument("--label", default="", help="a sentence added to the table caption")
    p.add_argument("--preset", default=None, help="tag absvit.preset (default: adhoc)")
    p.add_argument("--run", default=None, help="tag absvit.run (the AbSViT's pretraining run)")
    tracking_arguments(p)
    p.set_defaults(func=figures)
