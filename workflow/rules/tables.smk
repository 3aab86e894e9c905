# Tables: booktabs LaTeX for \input, plus CSV, Markdown and the reproduction report, per preset.


rule tables:
    """Tables 1-3 (tex, csv, md) and report.md from the comparisons and the segmentation results."""
    input:
        ablation=rules.lvar_ablation.output.csv,
        robustness=rules.robustness_comparison.output.csv,
        segmentation=expand(rules.segment.output.result, backbone=SEG_BACKBONES, dataset=SEG_DATASETS),
    output:
        [TABLES / f"table{n}.{ext}" for n in (1, 2, 3) for ext in ("tex", "csv", "md")],
        TABLES / "report.md",
    params:
        label=P["label"],
    log:
        LOGS / "tables.log",
    benchmark:
        BENCH / "tables.tsv"
    threads: 1
    shell:
        "{PYTHON} -m absvit tables --ablation {input.ablation} --robustness {input.robustness}"
        " --segmentation {input.segmentation} --label {params.label:q} --out-dir {TABLES} > {log} 2>&1"
