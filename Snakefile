# absvit-bench: regenerates the AbSViT appendix tables.
#   snakemake all                    the embedded default, locally (profiles/default); `all` is the default target
#   snakemake --profile slurm all    GPU stages through submitit on SLURM
# The plan: snakemake -n all; the picture: snakemake --rulegraph all | dot -Tsvg
# After a run, one page to share: snakemake --report results/embedded/report.html (report.zip: with the files)
configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/vl.smk"
include: "workflow/rules/released.smk"
include: "workflow/rules/tables.smk"


rule all:
    """The preset's tables and report, the appendix figures, and every run's eval JSONs (also runs no table
    compares)."""
    default_target: True
    input:
        rules.tables.output,
        eval_outputs(RUNS),
        figure_outputs(),
        released_outputs(),
        vl_outputs(),
        figure5_outputs(),
