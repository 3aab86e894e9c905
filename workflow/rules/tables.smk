# Tables: booktabs LaTeX for \input, plus CSV, Markdown and the reproduction report, per preset.


rule tables:
    input:
        ablation=OUT / "ablation" / "lvar.csv",
        robustness=OUT / "ablation" / "robustness.csv",
        segmentation=SEG_RESULTS,
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
