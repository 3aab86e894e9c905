# V&L fine-tuning (appendix section 4): the ImageNet-pretrained ViT / AbSViT as METER's visual encoder on VQAv2 and
# Flickr30k retrieval (task x encoder x seed), and Figure 5 from the VQA models (per seed). Configured by the preset's
# `vl:` key; a preset without it has none of these rules. The embedded default generates its data and a small text
# encoder (`vl_data`); a real preset names VQAv2, Flickr30k and a roberta-base folder.

if VL_GENERATED:

    rule vl_data:
        """The embedded V&L data (scenes, questions in the VQAv2 layout, captions in the Karpathy layout, Figure 5's
        manifest) and a small RoBERTa with a BPE tokenizer trained on that text (random init: NOT pretrained)."""
        output:
            data=directory(VL_DATA_ROOT),
            text_encoder=directory(VL_TEXT),
        params:
            python=PYTHON,
            g=VL["data"]["generate"],
            counts=" ".join(f"{k}={v}" for k, v in VL["data"]["generate"]["counts"].items()),
            t=" ".join(f"--{k.replace('_', '-')} {v}" for k, v in VL["text_encoder"]["generate"].items()),
        log:
            LOGS / "vl_data.log",
        benchmark:
            BENCH / "vl_data.tsv"
        threads: 1
        resources:
            mem_mb=2000,
        conda:
            ENV
        shell:
            "{params.python} -m absvit data embedded-vl --out {output.data} --text-encoder {output.text_encoder}"
            " --seed {params.g[seed]} --size {params.g[size]} --counts {params.counts} {params.t} > {log} 2>&1"


if VL:

    rule vl:
        """Fine-tune METER with one visual encoder (ViT or AbSViT) and one seed on one task, then evaluate it."""
        input:
            encoder=lambda wc: vl_encoder(wc.encoder, wc.seed),
            data=lambda wc: vl_inputs(wc.task)["data"],
            text_encoder=lambda wc: vl_inputs(wc.task)["text_encoder"],
        output:
            result=VL_OUT / "result.json",
            model=VL_OUT / "model.pth",
        wildcard_constraints:
            task="vqa|retrieval",
            encoder="vit|absvit",
            seed=r"\d+",
        params:
            e=lambda wc: VL["encoders"][wc.encoder],
            data=lambda wc: VL_DATA[wc.task],
            recipe=lambda wc: vl_recipe_json(wc.task, wc.seed),
            submit=lambda wc: submit("vl", f"{wc.task}-{wc.encoder}-s{wc.seed}"),
            out=lambda wc, output: Path(output.result).parent,
            tracking=tracking(),
            preset=PRESET,
        log:
            LOGS / "vl" / "{task}-{encoder}-s{seed}.log",
        benchmark:
            BENCH / "vl" / "{task}-{encoder}-s{seed}.tsv"
        threads: P["resources"]["vl"]["threads"]
        resources:
            mem_mb=4000,
        conda:
            ENV
        shell:
            "{params.submit} vl-{wildcards.task} --encoder {input.encoder} --model {params.e[model]}"
            " --text-encoder {input.text_encoder} --data {params.data} --out {params.out} --preset {params.preset}"
            " --run {wildcards.encoder} --run-name vl-{wildcards.task}/{params.preset}/{wildcards.encoder}/s{wildcards.seed}"
            " {params.tracking} --fresh-on-change --recipe {params.recipe:q} > {log} 2>&1"


if VL_FIGURE5:

    rule vl_figure:
        """Figure 5 of one seed: the VQA models' attention on the object each question names, and its scores."""
        input:
            absvit=expand(rules.vl.output.model, task="vqa", encoder="absvit", seed="{seed}"),
            vit=expand(rules.vl.output.model, task="vqa", encoder="vit", seed="{seed}"),
            data=VL_DATA_ROOT if VL_GENERATED else configured(VL_FIGURE5),
        output:
            FIGURES / "s{seed}" / "fig5.csv",
            FIGURES / "s{seed}" / "fig5.json",
            FIGURES / "s{seed}" / "fig5_vqa.pdf",
            reported(FIGURES / "s{seed}" / "fig5_vqa.png", "fig5_vqa", "Figures",
                     "Figure 5: attention moved by the question (V&L)", "Seed {seed}"),
        wildcard_constraints:
            seed=r"\d+",
        params:
            python=PYTHON,
            manifest=VL_FIGURE5,
            out=lambda wc: FIGURES / f"s{wc.seed}",
            label=P["label"],
            tracking=tracking(),
            preset=PRESET,
        log:
            LOGS / "vl_figure" / "s{seed}.log",
        benchmark:
            BENCH / "vl_figure" / "s{seed}.tsv"
        threads: 1
        resources:
            mem_mb=2000,
        conda:
            ENV
        shell:
            "{params.python} -m absvit vl-figure --absvit-model {input.absvit} --vit-model {input.vit}"
            " --manifest {params.manifest} --out-dir {params.out} --label {params.label:q} --preset {params.preset}"
            " --run vl --run-name vl-figure/{params.preset}/s{wildcards.seed} {params.tracking} > {log} 2>&1"
