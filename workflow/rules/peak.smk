# The hardware's attainable peak and the model's FLOPs per image (ddpbench.peak), for each
# setting's FLOP utilisation in the summary: measured once per host (its cache), timed alone
# like the training runs.


rule peak:
    output:
        "results/peak.json",
    log:
        "logs/peak.log",
    benchmark:
        "benchmarks/peak.tsv"
    conda:
        ENV
    threads: lambda wildcards: peak_threads()
    resources:
        bench_slot=1,
        mem_mb=2000,
    params:
        launch=launch_prefix,
        models=PEAK_MODELS,
        device=GRID.device,
    shell:
        "{params.launch} -- python -m ddpbench.peak --models {params.models} --device {params.device}"
        " --out {output} > {log} 2>&1"
