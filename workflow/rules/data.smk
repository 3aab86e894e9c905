# Data prep of the embedded default: the generated dataset, and ImageNet-C shards made from its
# val split. A preset with real datasets (`data.imagenet`, ...) has no data-prep jobs: its
# configured folders are the inputs, checked to exist before the DAG is built (common.smk).

if GENERATED:

    rule embedded_dataset:
        """Generated classification set in the ImageNet layout, plus A/R/Sketch-style trees."""
        output:
            [directory(DATA[s]) for s in ("train", "val", "imagenet-a", "imagenet-r", "imagenet-sketch")],
        params:
            python=PYTHON,
            g=P["data"]["generate"],
            root=DATA["train"].parent,
            per_class=" ".join(f"{k}={v}" for k, v in P["data"]["generate"]["per_class"].items()),
        log:
            LOGS / "embedded_dataset.log",
        benchmark:
            BENCH / "embedded_dataset.tsv"
        threads: 1
        resources:
            mem_mb=1000,
        conda:
            ENV
        shell:
            "{params.python} -m absvit data embedded --out {params.root} --seed {params.g[seed]} --size {params.g[size]}"
            " --per-class {params.per_class} > {log} 2>&1"

    rule imagenet_c:
        """One (corruption, severity) of the ImageNet-C tree, corrupted with imagecorruptions."""
        input:
            DATA["val"],
        output:
            shard=directory(DATA["imagenet-c"] / "{corruption}" / "{severity}"),
        wildcard_constraints:
            corruption="|".join(CORRUPTIONS),
            severity="[1-5]",
        params:
            c=P["data"]["make_imagenet_c"],
            per_class=f"--per-class {P['data']['make_imagenet_c']['per_class']}" if P["data"]["make_imagenet_c"]["per_class"] else "",
            submit=lambda wc: submit("imagenet_c", f"{wc.corruption}-{wc.severity}"),
            root=DATA["imagenet-c"],
        log:
            LOGS / "imagenet_c" / "{corruption}-{severity}.log",
        benchmark:
            BENCH / "imagenet_c" / "{corruption}-{severity}.tsv"
        threads: P["resources"]["imagenet_c"]["threads"]
        resources:
            mem_mb=1000,
        conda:
            ENV
        shell:
            "{params.submit} data make-imagenet-c --src {input} --out {params.root}"
            " --corruption {wildcards.corruption} --severity {wildcards.severity}"
            " --resize {params.c[resize]} --crop {params.c[crop]} {params.per_class} > {log} 2>&1"
