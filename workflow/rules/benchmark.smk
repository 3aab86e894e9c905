rule model_benchmark:
    """Training-step time and peak memory of AbSViT against timm's ViT of the same size."""
    input:
        "benchmarks/model_step.py",
    output:
        "results/benchmarks/model_step.txt",
    params:
        sizes=" ".join(config["benchmark"]["sizes"]),
        batch=config["benchmark"]["batch"],
        iters=config["benchmark"]["iters"],
    threads: workflow.cores
    shell:
        "python {input} --sizes {params.sizes} --batch {params.batch} --iters {params.iters}"
        " --threads {threads} --devices cpu > {output}.tmp && mv {output}.tmp {output} && cat {output}"
