# Robustness evaluation: every run x suite, one JSON each.


rule evaluate:
    """Evaluate one run's weights on one robustness suite into one JSON file."""
    input:
        weights=lambda wc: weights(wc.run),
        data=lambda wc: imagenet_c_input() if wc.suite == "imagenet-c" else [SUITE_DATA[wc.suite]],
    output:
        json=OUT / "eval" / "{run}" / "{suite}.json",
    wildcard_constraints:
        suite="|".join(SUITES),
    params:
        model=lambda wc: RUNS[wc.run]["model"],
        root=lambda wc: SUITE_DATA[wc.suite],
        e=P["evaluate"],
        ema="--ema" if P["evaluate"]["ema"] else "",
        classes="" if GENERATED else "--classes imagenet-1k",
        submit=lambda wc: submit("evaluate", f"{wc.run}-{wc.suite}"),
        tracking=tracking(),
    log:
        LOGS / "evaluate" / "{run}-{suite}.log",
    benchmark:
        BENCH / "evaluate" / "{run}-{suite}.tsv"
    threads: P["resources"]["evaluate"]["threads"]
    resources:
        mem_mb=2000,
    shell:
        "{params.submit} evaluate --model {params.model} --checkpoint {input.weights} --suite {wildcards.suite}"
        " --data {params.root} --out {output} {params.ema} {params.classes} --img-size {params.e[img_size]}"
        " --crop-pct {params.e[crop_pct]} --batch-size {params.e[batch_size]} --workers {params.e[workers]}"
        " --run-name evaluate/{PRESET}/{wildcards.run}/{wildcards.suite} {params.tracking}"
        " --preset {PRESET} --run {wildcards.run} > {log} 2>&1"
