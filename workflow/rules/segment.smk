# Segmentation (Table 1): the embedded default's generated sets, and UperNet fine-tuning of every
# backbone on every dataset, once per seed (`absvit segment`).

if SEG_GENERATED:

    rule segmentation_dataset:
        """The embedded default's small sets in the VOC / Cityscapes / ADE20K layouts."""
        input:
            # order only: made after the classification set, so that every `segment` job (the random-init ResNet's
            # too) is one step from the data, and the report's rule graph, one node per rule and dependency level,
            # draws `segment` once
            after=DATA["train"] if GENERATED else [],
        output:
            [directory(SEG_DATA_ROOT / d) for d in ("voc", "cityscapes", "ade20k")],
        params:
            python=PYTHON,
            g=SEG["generate"],
            root=SEG_DATA_ROOT,
            per_split=" ".join(f"{k}={v}" for k, v in SEG["generate"]["per_split"].items()),
        log:
            LOGS / "segmentation_dataset.log",
        benchmark:
            BENCH / "segmentation_dataset.tsv"
        threads: 1
        conda:
            ENV
        shell:
            "{params.python} -m absvit data embedded-segmentation --out {params.root} --seed {params.g[seed]}"
            " --per-split {params.per_split} > {log} 2>&1"


if SEG_DATASETS:

    rule segment:
        """Fine-tune one backbone on one dataset with one seed, then evaluate it (mIoU, per-class IoU)."""
        input:
            data=lambda wc: seg_root(wc.dataset),
            weights=lambda wc: seg_weights(wc.backbone, wc.seed),
        output:
            result=OUT / "segment" / "{backbone}" / "{dataset}" / "s{seed}" / "result.json",
        wildcard_constraints:
            backbone="|".join(SEG_BACKBONES),
            dataset="|".join(SEG_DATASETS),
            seed=r"\d+",
        params:
            b=lambda wc: SEG_BACKBONES[wc.backbone],
            ckpt=lambda wc, input: f"--checkpoint {input.weights[0]}" if input.weights else "",
            ema=lambda wc: "--ema" if SEG_BACKBONES[wc.backbone].get("ema") else "",
            recipe=lambda wc: seg_recipe_json(wc.dataset, wc.seed),
            submit=lambda wc: submit("segment", f"{wc.backbone}-{wc.dataset}-s{wc.seed}"),
            out=lambda wc, output: Path(output.result).parent,
            tracking=tracking(),
            preset=PRESET,
        log:
            LOGS / "segment" / "{backbone}-{dataset}-s{seed}.log",
        benchmark:
            BENCH / "segment" / "{backbone}-{dataset}-s{seed}.tsv"
        threads: P["resources"]["segment"]["threads"]
        resources:
            mem_mb=4000,
        conda:
            ENV
        shell:
            "{params.submit} segment --backbone {params.b[kind]} --model {params.b[model]} --dataset {wildcards.dataset}"
            " --data {input.data} --out {params.out} {params.ckpt} {params.ema} --preset {params.preset} --run {wildcards.backbone}"
            " --run-name segment/{params.preset}/{wildcards.backbone}/{wildcards.dataset}/s{wildcards.seed} {params.tracking}"
            " --fresh-on-change --recipe {params.recipe:q} > {log} 2>&1"
