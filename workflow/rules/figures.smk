# The appendix figures (Figs. 1, 3, 4) and their scores: multi-object scenes (generated for the embedded
# default, a folder with manifest.csv otherwise), the Fig. 4 linear decoder of the AbSViT run (cached, its
# own output, per seed), and `absvit figures` comparing that run with the ViT run, per seed
# (results/<preset>/figures/s<seed>/). Configured by the preset's `figures:` key; a preset without it
# has none of these rules.
#   figures:
#     scenes: {seed: 0, count: 24, size: 64}   # generated; or a folder: scenes: /data/lvis-scenes
#     absvit_run: absvit                       # runs of `runs:` (or released files through `checkpoints:`)
#     vit_run: vit
#     alphas: [1, 2, 5, 10, 40]                # Fig. 3 sweep, all scored
#     prior_scale: 40                          # alpha of Figs. 1 and 4 (the official demo's class-prior scale)
#     decoder_images: 1000                     # train images the decoder is fitted on (0: all)
#     show: 4                                  # scenes drawn (all are scored)
if FIG:

    if SCENES_GENERATED:

        rule scenes:
            """Generated multi-object scenes (2-3 shapes of different classes) with a mask per object."""
            output:
                directory(SCENES),
            params:
                python=PYTHON,
                s=FIG["scenes"],
                size=FIG["scenes"].get("size", 64),
            log:
                LOGS / "scenes.log",
            benchmark:
                BENCH / "scenes.tsv"
            threads: 1
            resources:
                mem_mb=500,
            conda:
                ENV
            shell:
                "{params.python} -m absvit data embedded-scenes --out {output} --seed {params.s[seed]}"
                " --count {params.s[count]} --size {params.size} > {log} 2>&1"

    rule decoder:
        """The Fig. 4 linear decoder (first-layer tokens -> patch pixels) of one run and seed, fitted on the train images."""
        input:
            weights=lambda wc: weights(wc.run, wc.seed),
            train=configured(DATA["train"], GENERATED),
        output:
            decoder=OUT / "decoder" / "{run}" / "s{seed}" / "decoder.pth",
        wildcard_constraints:
            run="|".join(RUNS),
            seed=r"\d+",
        params:
            python=PYTHON,
            model=lambda wc: RUNS[wc.run]["model"],
            images=FIG.get("decoder_images", 1000),
        log:
            LOGS / "decoder" / "{run}-s{seed}.log",
        benchmark:
            BENCH / "decoder" / "{run}-s{seed}.tsv"
        threads: 1
        resources:
            mem_mb=2000,
        conda:
            ENV
        shell:
            "{params.python} -m absvit decoder --checkpoint {input.weights} --model {params.model} --data {input.train}"
            " --out {output.decoder} --max-images {params.images} > {log} 2>&1"

    rule figures:
        """Figs. 1, 3, 4 (PNG + PDF) and their scores (figures.csv/md/tex/json) of one seed: the AbSViT run vs the ViT run."""
        input:
            absvit=lambda wc: weights(FIG["absvit_run"], wc.seed),
            vit=lambda wc: weights(FIG["vit_run"], wc.seed),
            decoder=lambda wc: expand(rules.decoder.output.decoder, run=FIG["absvit_run"], seed=wc.seed),
            scenes=configured(SCENES, SCENES_GENERATED),
        output:
            [reported(FIGURES / "s{seed}" / f"{stem}.png", stem, "Figures", title, "Seed {seed}") if ext == "png"
             else FIGURES / "s{seed}" / f"{stem}.pdf" for stem, title in FIGURE_TITLES.items() for ext in ("png", "pdf")],
            [FIGURES / "s{seed}" / f"figures.{ext}" for ext in ("csv", "md", "tex", "json")],
        wildcard_constraints:
            seed=r"\d+",
        params:
            python=PYTHON,
            out=lambda wc: FIGURES / f"s{wc.seed}",
            absvit_model=RUNS[FIG["absvit_run"]]["model"],
            vit_model=RUNS[FIG["vit_run"]]["model"],
            alphas=" ".join(str(a) for a in FIG.get("alphas", [1, 2, 5, 10, 40])),
            prior_scale=FIG.get("prior_scale", 40),
            show=FIG.get("show", 4),
            label=P["label"],
            tracking=tracking(),
            preset=PRESET,
            run=FIG["absvit_run"],
        log:
            LOGS / "figures" / "s{seed}.log",
        benchmark:
            BENCH / "figures" / "s{seed}.tsv"
        threads: 1
        resources:
            mem_mb=2000,
        conda:
            ENV
        shell:
            "{params.python} -m absvit figures --absvit-checkpoint {input.absvit} --absvit-model {params.absvit_model}"
            " --vit-checkpoint {input.vit} --vit-model {params.vit_model} --decoder {input.decoder}"
            " --scenes {input.scenes} --out-dir {params.out} --alphas {params.alphas} --prior-scale {params.prior_scale}"
            " --show {params.show} --label {params.label:q} --run-name figures/{params.preset}/s{wildcards.seed}"
            " --preset {params.preset} --run {params.run} {params.tracking} > {log} 2>&1"
