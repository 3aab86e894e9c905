# Segmentation (Table 1): the embedded default's generated sets, and UperNet fine-tuning of every backbone on
# every dataset (`absvit segment`).
SEG = P["segmentation"]
SEG_BACKBONES = SEG["backbones"]
SEG_DATASETS = SEG["datasets"]
SEG_GENERATED = "generate" in SEG
SEG_DATA_ROOT = Path("results") / "data" / PRESET / "segmentation"


def seg_root(dataset):
    return SEG_DATA_ROOT / dataset if SEG_GENERATED else Path(SEG_DATASETS[dataset]["root"])


def seg_weights(name):
    """The backbone's starting weights: a pretraining run's model.pth, a configured file, or none."""
    b = SEG_BACKBONES[name]
    if b.get("run"):
        return [weights(b["run"])]
    return [b["checkpoint"]] if b.get("checkpoint") else []


def seg_recipe_args(dataset):
    values = {**SEG["recipe"], **SEG_DATASETS[dataset]["recipe"]}
    return " ".join(f"{k}={v}" for k, v in values.items())


if SEG_GENERATED:

    rule segmentation_dataset:
        """The embedded default's small sets in the VOC / Cityscapes / ADE20K layouts."""
        output:
            [directory(SEG_DATA_ROOT / d) for d in ("voc", "cityscapes", "ade20k")],
        params:
            g=SEG["generate"],
            per_split=" ".join(f"{k}={v}" for k, v in SEG["generate"]["per_split"].items()),
        log:
            LOGS / "segmentation_dataset.log",
        benchmark:
            BENCH / "segmentation_dataset.tsv"
        threads: 1
        shell:
            "{PYTHON} -m absvit data embedded-segmentation --out {SEG_DATA_ROOT} --seed {params.g[seed]}"
            " --per-split {params.per_split} > {log} 2>&1"


rule segment:
    """Fine-tune one backbone on one dataset, then evaluate it (mIoU, per-class IoU)."""
    input:
        data=lambda wc: seg_root(wc.dataset),
        weights=lambda wc: seg_weights(wc.backbone),
    output:
        result=OUT / "segment" / "{backbone}" / "{dataset}" / "result.json",
    wildcard_constraints:
        backbone="|".join(SEG_BACKBONES),
        dataset="|".join(SEG_DATASETS),
    params:
        b=lambda wc: SEG_BACKBONES[wc.backbone],
        ckpt=lambda wc, input: f"--checkpoint {input.weights[0]}" if input.weights else "",
        ema=lambda wc: "--ema" if SEG_BACKBONES[wc.backbone].get("ema") else "",
        recipe=lambda wc: seg_recipe_args(wc.dataset),
        submit=lambda wc: submit("segment", f"{wc.backbone}-{wc.dataset}"),
        out=lambda wc, output: Path(output.result).parent,
        tracking=tracking(),
    log:
        LOGS / "segment" / "{backbone}-{dataset}.log",
    benchmark:
        BENCH / "segment" / "{backbone}-{dataset}.tsv"
    threads: P["resources"]["segment"]["threads"]
    resources:
        mem_mb=4000,
    shell:
        "{params.submit} segment --backbone {params.b[kind]} --model {params.b[model]} --dataset {wildcards.dataset}"
        " --data {input.data} --out {params.out} {params.ckpt} {params.ema} --preset {PRESET} --run {wildcards.backbone}"
        " --run-name segment/{PRESET}/{wildcards.backbone}/{wildcards.dataset} {params.tracking}"
        " --fresh-on-change --set {params.recipe} > {log} 2>&1"
