# Tables: booktabs LaTeX for \input, plus CSV, Markdown and the reproduction report.


rule tables:
    input:
        ablation=OUT / "ablation" / "lvar.csv",
    output:
        [TABLES / f"table2.{ext}" for ext in ("tex", "csv", "md")],
        TABLES / "report.md",
    params:
        label=P["label"],
    log:
        LOGS / "tables.log",
    benchmark:
        BENCH / "tables.tsv"
    threads: 1
    shell:
        "python -m absvit tables --ablation {input.ablation} --label {params.label:q} --out-dir {TABLES} > {log} 2>&1"
