# Tables: booktabs LaTeX for \input, plus CSV, Markdown, HTML pages and the reproduction report, per preset.
#
# Snakemake's report (`snakemake --report results/<preset>/report.html` after a run) shows the outputs marked with
# `table_report` / `reported` (common.smk), each under its category in the sidebar, captioned by
# workflow/report/<kind>.rst (RST + Jinja; see table3.rst). Adding one is one call and one caption file:
#   a table (say Table 4): its verb writes <stem>.{tex,csv,md}, its rule runs `absvit html <stem>.md` (the page the
#     report shows inline; Snakemake offers a CSV or Markdown file only as a download) and lists
#     table_report("<stem>", "Table 4", "Table 4: <what it shows>") in its outputs, + workflow/report/<stem>.rst;
#   a figure or any other file: reported(path, "<kind>", "<category>", "<label>"[, "<subcategory>"]) in its rule's
#     outputs (figures.smk: category "Figures", subcategory "Seed {seed}"), + workflow/report/<kind>.rst.


rule tables:
    """Tables 1-3 (tex, csv, md, and an HTML page of each; mean +- std over seeds), the figures' scores, the cost
    table, and report.md (+ its page) from the comparisons, the segmentation results and the figures."""
    input:
        ablation=rules.lvar_ablation.output.csv,
        robustness=rules.robustness_comparison.output.csv,
        segmentation=expand(rules.segment.output.result, backbone=SEG_BACKBONES, dataset=SEG_DATASETS, seed=SEEDS),
        figures=[Path(p).with_suffix(".csv") for p in figure_outputs()],
    output:
        [TABLES / f"{stem}.{ext}" for stem in ("table1", "table2", "table3", "cost") + (("figures",) if FIG else ())
         for ext in ("tex", "md")],
        TABLES / "report.md",
        table_report("table1", "Table 1", "Table 1: semantic segmentation (mIoU)"),
        table_report("table2", "Table 2", "Table 2: the L_var ablation"),
        table_report("table3", "Table 3", "Table 3: ViT vs AbSViT robustness"),
        table_report("figures", "Figures", "Scores of Figs. 1, 3, 4", "Scores (all seeds)") if FIG else [],
        table_report("cost", "Cost", "What the run cost, per stage"),
        reported(TABLES / "report.html", "report", "Report", "Reproduction report: each number beside the paper's"),
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
        markdown=lambda wc, output: " ".join(f for f in output if f.endswith(".md")),  # -> the report's HTML pages
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
        " > {log} 2>&1 && {params.python} -m absvit html {params.markdown} >> {log} 2>&1"
