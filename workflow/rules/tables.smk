# Tables: booktabs LaTeX for \input, plus CSV, Markdown and the reproduction report, per preset.


rule tables:
    """Tables 1-3 (tex, csv, md; mean +- std over seeds) where the preset configures them, the figures' scores, the
    cost table, and report.md from the comparisons, the segmentation results, the figures and the released files'
    table."""
    input:
        ablation=rules.lvar_ablation.output.csv if "table2" in P else [],
        robustness=rules.robustness_comparison.output.csv if "table3" in P else [],
        segmentation=expand(rules.segment.output.result, backbone=SEG_BACKBONES, dataset=SEG_DATASETS, seed=SEEDS)
        if SEG_DATASETS else [],
        figures=[Path(p).with_suffix(".csv") for p in figure_outputs()],
        released=released_outputs("md"),
    output:
        [TABLES / f"{stem}.{ext}" for stem in table_stems() for ext in ("tex", "csv", "md")],
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
        inputs=lambda wc, input: " ".join(f"--{flag} {' '.join(map(str, files))}" for flag, files in (
            ("ablation", input.ablation), ("robustness", input.robustness), ("segmentation", input.segmentation),
            ("figures", input.figures), ("section", input.released)) if files),
    log:
        LOGS / "tables.log",
    benchmark:
        BENCH / "tables.tsv"
    threads: 1
    conda:
        ENV
    shell:
        "{params.python} -m absvit tables {params.inputs} --label {params.label:q} --out-dir {params.out}"
        " --preset {params.preset} --bench-dir {params.bench} --submitit-dir {params.submitit}"
        " --launcher {params.launcher} --gpus {params.gpus} {params.tracking} > {log} 2>&1"
