# Tables: booktabs LaTeX for \input, plus CSV, Markdown and the reproduction report, per preset.


rule tables:
    """Tables 1-3 (tex, csv, md; mean +- std over seeds), the figures' scores, the cost table, and
    report.md from the comparisons, the segmentation results and the figures."""
    input:
        ablation=rules.lvar_ablation.output.csv,
        robustness=rules.robustness_comparison.output.csv,
        segmentation=expand(rules.segment.output.result, backbone=SEG_BACKBONES, dataset=SEG_DATASETS, seed=SEEDS),
        figures=[Path(p).with_suffix(".csv") for p in figure_outputs()],
    output:
        [TABLES / f"{stem}.{ext}" for stem in ("table1", "table2", "table3", "cost") + (("figures",) if FIG else ())
         for ext in ("tex", "csv", "md")],
        TABLES / "report.md",
    params:
        python=PYTHON,
        label=P["label"],
        out=TABLES,
        preset=PRESET,
        launcher=config["launcher"],
        bench=BENCH,  # every other job's benchmark file exists by now: they all feed this rule
        submitit=OUT / "submitit",
        gpus=" ".join(f"{stage}={r['gpus_per_node'] * r.get('nodes', 1)}" for stage, r in P["resources"].items()),
        tracking=tracking(),
        figures=lambda wc, input: f"--figures {' '.join(input.figures)}" if input.figures else "",
    log:
        LOGS / "tables.log",
    benchmark:
        BENCH / "tables.tsv"
    threads: 1
    conda:
        ENV
    shell:
        "{params.python} -m absvit tables --ablation {input.ablation} --robustness {input.robustness}"
        " --segmentation {input.segmentation} --label {params.label:q} --out-dir {params.out} --preset {params.preset}"
        " {params.figures}"
        " --bench-dir {params.bench} --submitit-dir {params.submitit} --launcher {params.launcher} --gpus {params.gpus}"
        " {params.tracking}"
        " > {log} 2>&1"
