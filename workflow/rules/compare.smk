# The study as a portable bundle (ddpbench.bundle), and `snakemake compare`: the bundles of
# compare.bundles side by side (ddpbench.compare).


rule bundle:
    input:
        runs=run_files(),
        comm=COMM_FILES,
        summary="results/summary.json",
        csv="results/summary.csv",
        prediction="results/prediction.csv",
        peak="results/peak.json",
        config="results/config.json",
        schema="workflow/schemas/run.schema.json",
    output:
        "results/bundle.tar.gz",
    log:
        "logs/bundle.log",
    conda:
        ENV
    shell:
        "python -m ddpbench.bundle --root results --runs {input.runs} --summary {input.summary}"
        " --config {input.config} --comm {input.comm} --schema {input.schema} --out {output} > {log} 2>&1"
        " || {{ tail -n 20 {log} >&2; exit 1; }}"


rule compare:
    input:
        bundles=config["compare"]["bundles"],
    output:
        html="results/compare.html",
        csv="results/compare.csv",
    log:
        "logs/compare.log",
    conda:
        ENV
    params:
        reference=compare_reference,
        history="--history" if config["compare"]["history"] else "",
        throughput=config["report"]["min_effect"]["throughput"],
        accuracy=config["report"]["min_effect"]["accuracy_points"],
    shell:
        "python -m ddpbench.compare {input.bundles:q} -o {output.html} --csv {output.csv}"
        " --min-effect-throughput {params.throughput} --min-effect-accuracy {params.accuracy}"
        " {params.reference} {params.history} > {log} 2>&1"
        " || {{ tail -n 20 {log} >&2; exit 1; }}"


# Seconds of work each: not worth a cluster job.
localrules:
    bundle,
    compare,
