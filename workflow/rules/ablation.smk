# Two-arm robustness comparisons from the runs' eval JSONs: the L_var ablation (Table 2) and
# ViT vs AbSViT (Table 3). Both run `absvit ablation`; the arms come from presets.<preset>.table2 / table3.

EVAL_DIR = Path(rules.evaluate.output.json).parent  # results/<preset>/eval/{run}


def comparison_inputs(table):
    """Every eval JSON of the runs presets.<preset>.<table> compares."""
    return expand(rules.evaluate.output.json, run=list(P[table].values()), suite=SUITES)


def comparison_arms(table):
    """`--arm ARM=RUN:EVAL_DIR ...` of the runs named by presets.<preset>.<table>."""
    return " ".join(f"{arm}={run}:{expand(EVAL_DIR, run=run)[0]}" for arm, run in P[table].items())


rule lvar_ablation:
    """Table 2's comparison: AbSViT without vs with the variational loss L_var."""
    input:
        comparison_inputs("table2"),
    output:
        csv=OUT / "ablation" / "lvar.csv",
    params:
        arms=comparison_arms("table2"),
        label=P["label"],
        tracking=tracking(),
    log:
        LOGS / "lvar_ablation.log",
    benchmark:
        BENCH / "lvar_ablation.tsv"
    threads: 1
    shell:
        "{PYTHON} -m absvit ablation --name lvar --arm {params.arms} --label {params.label:q}"
        " --preset {PRESET} --out {output} {params.tracking} > {log} 2>&1"


rule robustness_comparison:
    """Table 3's comparison: ViT vs AbSViT on every robustness suite."""
    input:
        comparison_inputs("table3"),
    output:
        csv=OUT / "ablation" / "robustness.csv",
    params:
        arms=comparison_arms("table3"),
        label=P["label"],
        tracking=tracking(),
    log:
        LOGS / "robustness_comparison.log",
    benchmark:
        BENCH / "robustness_comparison.tsv"
    threads: 1
    shell:
        "{PYTHON} -m absvit ablation --name robustness --arm {params.arms} --label {params.label:q}"
        " --preset {PRESET} --out {output} {params.tracking} > {log} 2>&1"
