# The released checkpoints re-measured (the `released` preset, or any preset that names released files in
# `checkpoints:`): each file's published ImageNet top-1 / mCE beside the measured ones, and its other suites.

if P["checkpoints"]:

    rule released:
        """The released files' table: published vs measured top-1 and mCE, their difference, IN-A / -R / -Sketch, FGSM, PGD."""
        input:
            eval_outputs(P["checkpoints"]),
        output:
            released_outputs("tex", "md"),
            table_report("released", *TABLE_TITLES["released"]),
        params:
            python=PYTHON,
            evals=" ".join(f"{run}={expand(EVAL_DIR, run=run, seed=run_seeds(run)[0])[0]}" for run in P["checkpoints"]),
            label=P["label"],
            out=TABLES,
            preset=PRESET,
            tracking=tracking(),
        log:
            LOGS / "released.log",
        benchmark:
            BENCH / "released.tsv"
        threads: 1
        conda:
            ENV
        shell:
            "{params.python} -m absvit released --eval {params.evals} --label {params.label:q} --out-dir {params.out}"
            " --preset {params.preset} {params.tracking} > {log} 2>&1"
            " && {params.python} -m absvit html {params.out}/released.md >> {log} 2>&1"
