# Two-arm robustness comparisons from the runs' eval JSONs, over all seeds: the L_var ablation
# (Table 2) and ViT vs AbSViT (Table 3). Both run `absvit ablation`; the arms come from
# presets.<preset>.table2 / table3.


if "table2" in P:

    rule lvar_ablation:
        """Table 2's comparison: AbSViT without vs with the variational loss L_var."""
        input:
            comparison_inputs("table2"),
        output:
            csv=OUT / "ablation" / "lvar.csv",
        params:
            python=PYTHON,
            arms=comparison_arms("table2"),
            label=P["label"],
            tracking=tracking(),
            preset=PRESET,
        log:
            LOGS / "lvar_ablation.log",
        benchmark:
            BENCH / "lvar_ablation.tsv"
        threads: 1
        conda:
            ENV
        shell:
            "{params.python} -m absvit ablation --name lvar --arm {params.arms} --label {params.label:q}"
            " --preset {params.preset} --out {output} {params.tracking} > {log} 2>&1"


if "table3" in P:

    rule robustness_comparison:
        """Table 3's comparison: ViT vs AbSViT on every robustness suite."""
        input:
            comparison_inputs("table3"),
        output:
            csv=OUT / "ablation" / "robustness.csv",
        params:
            python=PYTHON,
            arms=comparison_arms("table3"),
            label=P["label"],
            tracking=tracking(),
            preset=PRESET,
        log:
            LOGS / "robustness_comparison.log",
        benchmark:
            BENCH / "robustness_comparison.tsv"
        threads: 1
        conda:
            ENV
        shell:
            "{params.python} -m absvit ablation --name robustness --arm {params.arms} --label {params.label:q}"
            " --preset {params.preset} --out {output} {params.tracking} > {log} 2>&1"
