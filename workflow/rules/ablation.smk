# The L_var ablation: the with / without L_var arms' robustness results side by side.


rule lvar_ablation:
    input:
        expand(OUT / "eval" / "{run}" / "{suite}.json", run=[P["table2"]["without_lvar"], P["table2"]["with_lvar"]], suite=SUITES),
    output:
        OUT / "ablation" / "lvar.csv",
    params:
        without=OUT / "eval" / P["table2"]["without_lvar"],
        with_=OUT / "eval" / P["table2"]["with_lvar"],
        t=P["table2"],
        label=P["label"],
        tracking=tracking(),
    log:
        LOGS / "lvar_ablation.log",
    benchmark:
        BENCH / "lvar_ablation.tsv"
    threads: 1
    shell:
        "python -m absvit ablation --without {params.without} --with {params.with_}"
        " --without-run {params.t[without_lvar]} --with-run {params.t[with_lvar]} --label {params.label:q}"
        " --preset {PRESET} --out {output} {params.tracking} > {log} 2>&1"
