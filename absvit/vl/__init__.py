"""Vision-and-language fine-tuning (appendix section 4): the ImageNet-pretrained ViT / AbSViT as the visual encoder of
a METER-style model, with the question or caption as AbSViT's top-down prior (VQAv2, Flickr30k retrieval).

Modules, the way the data flows: ``answers`` (VQA answers: normalisation, vocabulary, soft scores, the official
accuracy), ``datasets`` (the VQAv2 and Flickr30k-Karpathy readers and torch datasets), ``embedded`` (the embedded
default's scenes, questions and captions, and its small text encoder), ``encoders`` / ``fusion`` / ``model`` (the
visual and text encoders, METER's co-attention, heads and objectives), ``tasks`` (each task's data, head and
evaluation), ``finetune`` (the ``vl-vqa`` / ``vl-retrieval`` verbs), ``figure`` (Figure 5, ``vl-figure``). This module
registers the verbs and imports nothing heavy: the CLI builds every parser.
"""
from __future__ import annotations

from absvit.arguments import job_arguments, job_kwargs, key_values, recipe_arguments, tracking_arguments


def _embedded(a) -> None:
    from absvit.vl.embedded import build_text_encoder, generate_vl, vl_corpus

    counts = {k: int(v) for k, v in key_values(a.counts, "--counts").items()}
    generate_vl(a.out, seed=a.seed, size=a.size, counts=counts)
    build_text_encoder(a.text_encoder, vl_corpus(a.out), hidden=a.hidden, layers=a.layers, heads=a.heads, seed=a.seed,
                       mlm_texts=vl_corpus(a.out, splits=("train",)), mlm_steps=a.mlm_steps)


def _finetune(task: str):
    def run(a) -> None:
        from absvit.arguments import recipe_values
        from absvit.vl.recipe import VLRecipe
        from absvit.vl.finetune import finetune

        values, where = recipe_values(a)
        finetune(task, a.encoder, a.text_encoder, a.data, a.out, VLRecipe.for_task(task, values, where=where),
                 model_name=a.model, fresh_on_change=a.fresh_on_change, **job_kwargs(a))

    return run


def _figure(a) -> None:
    from absvit.vl.figure import make_figure5

    make_figure5(a.absvit_model, a.vit_model, a.manifest, a.out_dir, show=a.show, width=a.width, label=a.label,
                 tracking_uri=a.tracking_uri, track=not a.no_mlflow, run_name=a.run_name, preset=a.preset, run=a.run)


def add_verbs(verbs, data) -> None:
    """``data embedded-vl``, ``vl-vqa``, ``vl-retrieval`` and ``vl-figure`` (``verbs``: the CLI's verbs, ``data``: the
    ``data`` verb's sub-verbs)."""
    p = data.add_parser("embedded-vl", help="the embedded default's V&L data (VQAv2 and Flickr30k layouts) and text encoder")
    p.add_argument("--out", required=True, help="writes <out>/vqa/ (VQAv2 layout + figure5.csv) and <out>/flickr30k/")
    p.add_argument("--text-encoder", required=True, help="the small RoBERTa's folder (save_pretrained layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--counts", nargs="+", default=[], metavar="SPLIT=N", help="scenes per split (train, val, test)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--mlm-steps", type=int, default=0,
                   help="masked-LM pretraining steps on the train questions and captions (0: random init)")
    p.set_defaults(func=_embedded)

    for task, data_help in (("vqa", "the VQAv2 root: {train2014,val2014}/, v2_*_questions.json, v2_*_annotations.json"),
                            ("retrieval", "the Flickr30k root: dataset_flickr30k.json (Karpathy), flickr30k-images/")):
        p = verbs.add_parser(f"vl-{task}", help=f"V&L fine-tuning on {'VQAv2' if task == 'vqa' else 'Flickr30k retrieval'}"
                             "; resumes from <out>/checkpoint.pth")
        p.add_argument("--encoder", required=True, help="the visual encoder's weights (ViT / AbSViT: pretraining "
                       "model.pth or a released file)")
        p.add_argument("--model", default=None, help="its timm name (default: the one the file records)")
        p.add_argument("--text-encoder", required=True, help="a RoBERTa folder saved by transformers (e.g. roberta-base)")
        p.add_argument("--data", required=True, help=data_help)
        p.add_argument("--out", required=True)
        recipe_arguments(p, "V&L")
        job_arguments(p)
        p.set_defaults(func=_finetune(task))

    p = verbs.add_parser("vl-figure", help="Figure 5: the VQA models' attention on the object each question names")
    p.add_argument("--absvit-model", required=True, help="the AbSViT VQA run's model.pth (`absvit vl-vqa`)")
    p.add_argument("--vit-model", required=True, help="the ViT VQA run's model.pth")
    p.add_argument("--manifest", required=True, help="figure5.csv: question_id, question, image, mask, class_index")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--show", type=int, default=4, help="scenes drawn (all are scored)")
    p.add_argument("--width", type=float, default=7.0)
    p.add_argument("--label", default="", help="a sentence added to the caption")
    p.add_argument("--preset", default=None)
    p.add_argument("--run", default=None)
    tracking_arguments(p)
    p.set_defaults(func=_figure)
