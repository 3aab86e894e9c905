configfile: "config.yaml"


include: "workflow/rules/benchmark.smk"


rule all:
    input:
        "results/benchmarks/model_step.txt",
