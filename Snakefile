# absvit-bench: regenerates the AbSViT appendix tables.
#   snakemake all                    the embedded default, locally (profiles/default)
#   snakemake --profile slurm all    GPU stages through submitit on SLURM
# The plan: snakemake -n all; the picture: snakemake --rulegraph all | dot -Tsvg
configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/tables.smk"


rule all:
    input:
        TABLES / "table1.tex",
        TABLES / "table2.tex",
        TABLES / "table3.tex",
        expand(OUT / "eval" / "{run}" / "{suite}.json", run=RUNS, suite=SUITES),
