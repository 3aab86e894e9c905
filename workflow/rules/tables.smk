# Tables: booktabs LaTeX for \input, plus CSV, Markdown, HTML pages and the reproduction report, per preset.
#
# Snakemake's report (`snakemake --report results/<preset>/report.html` after a run) shows the outputs marked with
# `table_report` / `reported` (common.smk), each under its category in the sidebar, captioned by
# workflow/report/<kind>.rst (RST + Jinja; see table3.rst). Adding one is one call and one caption file:
#   a table: its verb writes <stem>.{tex,csv,md}, its rule runs `absvit html <stem>.md` (the page the report shows
#     inline; Snakemake offers a CSV or Markdown file only as a download) and lists
#     table_report("<stem>", *TABLE_TITLES["<stem>"]) in its outputs (TABLE_TITLES: common.smk), + workflow/report/<stem>.rst;
#   a figure or any other file: reported(path, "<kind>", "<category>", "<label>"[, "<subcategory>"]) in its rule's
#     outputs (figures.smk: category "Figures", subcategory "Seed {seed}"), + workflow/report/<kind>.rst.


rule tables:
    """Tables 1-4 (tex, csv, md, and an HTML page of each; mean +- std over seeds) where the preset configures them,
    the figures' scores, the cost table, and report.md (+ its page) from the comparisons, the segmentation results,
    the V&L results, the figures and the released files' table."""
    input:
        ablation=[rules.lvar_ablation.output.csv] if "table2" in P else [],
        robustness=[rules.robustness_comparison.output.csv] if "table3" in P else [],
        segmentation=expand(rules.segment.output.result, backbone=SEG_BACKBONES, dataset=SEG_DATASETS, seed=SEEDS)
        if SEG_DATASETS else [],
        vl=vl_outputs(),
        figures=[Path(p).with_suffix(".csv") for p in figure_outputs()],
        figure5=figure5_outputs(),
        released=released_outputs("md"),
    output:
        [TABLES / f"{stem}.{ext}" for stem in table_stems() for ext in ("tex", "md")],
        TABLES / "report.md",
        [table_report(stem, *TABLE_TITLES[stem]) for stem in table_stems()],
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
        inputs=lambda wc, input: " ".join(f"--{flag} {' '.join(map(str, files))}" for flag, files in (
            ("ablation", input.ablation), ("robustness", input.robustness), ("segmentation", input.segmentation),
            ("vl", input.vl), ("figures", input.figures), ("figure5", input.figure5), ("section", input.released))
            if files),
        markdown=lambda wc, output: " ".join(f for f in output if f.endswith(".md")),  # -> the report's HTML pages
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
        " && {params.python} -m absvit html {params.markdown} >> {log} 2>&1"
