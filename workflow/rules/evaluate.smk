# Robustness evaluation: every run x seed, all five suites in one job (one model load), one JSON each. The label
# space is the checkpoint's own (its recorded classes; ImageNet-1k for an official file), checked against every set
# before the DAG is built (common.smk).


rule evaluate:
    """Evaluate one run's weights of one seed on every robustness suite, one JSON file per suite."""
    input:
        weights=lambda wc: weights(wc.run, wc.seed),
        data=suite_inputs(),
    output:
        [EVAL_DIR / f"{suite}.json" for suite in SUITES],
    wildcard_constraints:
        seed=r"\d+",
    params:
        model=lambda wc: RUNS[wc.run]["model"],
        suites=" ".join(SUITES),
        roots=" ".join(str(SUITE_DATA[s]) for s in SUITES),
        e=P["evaluate"],
        ema="--ema" if P["evaluate"]["ema"] else "",
        submit=lambda wc: submit("evaluate", f"{wc.run}-s{wc.seed}"),
        tracking=tracking(),
        preset=PRESET,
    log:
        LOGS / "evaluate" / "{run}-s{seed}.log",
    benchmark:
        BENCH / "evaluate" / "{run}-s{seed}.tsv"
    threads: P["resources"]["evaluate"]["threads"]
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "{params.submit} evaluate --model {params.model} --checkpoint {input.weights} --suite {params.suites}"
        " --data {params.roots} --out {output} {params.ema} --img-size {params.e[img_size]}"
        " --crop-pct {params.e[crop_pct]} --batch-size {params.e[batch_size]} --workers {params.e[workers]}"
        " --run-name evaluate/{params.preset}/{wildcards.run}/s{wildcards.seed} {params.tracking}"
        " --preset {params.preset} --run {wildcards.run} > {log} 2>&1"
