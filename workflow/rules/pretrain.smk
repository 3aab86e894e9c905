# ImageNet pretraining of every configured run (resumable; GPU jobs through submitit). A job that
# Snakemake reruns because its settings changed starts fresh: the old run's checkpoint is moved aside.


def recipe_args(run):
    values = dict(P["recipe"])
    if "var_weight" in RUNS[run]:
        values["var_weight"] = RUNS[run]["var_weight"]
    return " ".join(f"{k}={v}" for k, v in values.items())


rule pretrain:
    """Pretrain one run (a model and the preset's recipe) on the ImageNet train split."""
    input:
        train=DATA["train"],
        val=DATA["val"],
    output:
        model=OUT / "pretrain" / "{run}" / "model.pth",
        result=OUT / "pretrain" / "{run}" / "result.json",
    wildcard_constraints:
        run="|".join(r for r in RUNS if r not in P["checkpoints"]) or "^$",
    params:
        model=lambda wc: RUNS[wc.run]["model"],
        recipe=lambda wc: recipe_args(wc.run),
        submit=lambda wc: submit("pretrain", wc.run),
        tracking=tracking(),
        data=DATA["train"].parent,
    log:
        LOGS / "pretrain" / "{run}.log",
    benchmark:
        BENCH / "pretrain" / "{run}.tsv"
    threads: P["resources"]["pretrain"]["threads"]
    resources:
        mem_mb=4000,
    shell:
        "{params.submit} pretrain --model {params.model} --data {params.data}"
        " --out {OUT}/pretrain/{wildcards.run} --run-name pretrain/{PRESET}/{wildcards.run} {params.tracking}"
        " --preset {PRESET} --run {wildcards.run} --fresh-on-change --set {params.recipe} > {log} 2>&1"


def weights(run):
    """A run's weights: its configured released checkpoint, else what `pretrain` makes."""
    return P["checkpoints"].get(run) or expand(rules.pretrain.output.model, run=run)[0]
