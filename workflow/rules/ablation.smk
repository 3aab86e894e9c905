# Two-arm robustness comparisons from the runs' eval JSONs: the L_var ablation (Table 2) and
# ViT vs AbSViT (Table 3). Both run `absvit ablation`; the arms come from presets.<preset>.table2 / table3.


def comparison_inputs(table):
    return expand(OUT / "eval" / "{run}" / "{suite}.json", run=list(P[table].values()), suite=SUITES)


def comparison_arms(table):
    """`--arm ARM=RUN:EVAL_DIR ...` of the runs named by presets.<preset>.<table>."""
    return " ".join(f"{arm}={run}:{OUT / 'eval' / run}" for arm, run in P[table].items())


rule lvar_ablation:
    input:
        comparison_inputs("table2"),
    output:
        OUT / "ablation" / "lvar.csv",
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
    input:
        comparison_inputs("table3"),
    output:
        OUT / "ablation" / "robustness.csv",
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
