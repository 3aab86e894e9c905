# ImageNet pretraining of every configured run, once per seed (resumable; GPU jobs through submitit).
# A job that Snakemake reruns because its settings changed starts fresh: the old run's checkpoint is
# moved aside.


if TRAINED:  # a preset of released files only pretrains nothing

    rule pretrain:
        """Pretrain one run (a model and the preset's recipe) with one seed on the ImageNet train split."""
        input:
            train=configured(DATA["train"], GENERATED),
            val=configured(DATA["val"], GENERATED),
        output:
            model=OUT / "pretrain" / "{run}" / "s{seed}" / "model.pth",
            result=OUT / "pretrain" / "{run}" / "s{seed}" / "result.json",
        wildcard_constraints:
            run="|".join(TRAINED),
            seed=r"\d+",
        params:
            model=lambda wc: RUNS[wc.run]["model"],
            recipe=lambda wc: recipe_json(wc.run, wc.seed),
            submit=lambda wc: submit("pretrain", f"{wc.run}-s{wc.seed}"),
            tracking=tracking(),
            data=DATA["train"].parent,
            out=lambda wc, output: Path(output.model).parent,
            preset=PRESET,
        log:
            LOGS / "pretrain" / "{run}-s{seed}.log",
        benchmark:
            BENCH / "pretrain" / "{run}-s{seed}.tsv"
        threads: P["resources"]["pretrain"]["threads"]
        resources:
            mem_mb=4000,
        conda:
            ENV
        shell:
            "{params.submit} pretrain --model {params.model} --data {params.data} --out {params.out}"
            " --run-name pretrain/{params.preset}/{wildcards.run}/s{wildcards.seed} {params.tracking}"
            " --preset {params.preset} --run {wildcards.run} --fresh-on-change --recipe {params.recipe:q} > {log} 2>&1"
