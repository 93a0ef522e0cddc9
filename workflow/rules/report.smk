rule aggregate:
    # Every run is checked against its file name and against the workflow config (results/config.json),
    # whose predict: section, with the all-reduce timings (predict.smk), gives summary.json's prediction.
    input:
        runs=run_files(),
        comm=COMM_FILES,
        peak="results/peak.json",
        schema="workflow/schemas/run.schema.json",
        config="results/config.json",
    output:
        csv=report(
            "results/summary.csv",
            caption="../../report/summary.rst",
            category="Summary",
        ),
        json=report(
            "results/summary.json",
            caption="../../report/summary.rst",
            category="Summary",
        ),
        prediction=report(
            "results/prediction.csv",
            caption="../../report/prediction.rst",
            category="Summary",
        ),
    log:
        "logs/aggregate.log",
    conda:
        ENV
    params:
        expected=RUN_ORDER,
    shell:
        # The log's end on the console too: a refused run names its file and the fix.
        "python -m ddpbench.summary --runs {input.runs} --schema {input.schema} --config {input.config}"
        " --expect {params.expected} --comm {input.comm} --csv {output.csv} --json {output.json}"
        " --prediction-csv {output.prediction} --peak {input.peak} > {log} 2>&1"
        " || {{ tail -n 20 {log} >&2; exit 1; }}"


rule workflow_config:
    output:
        "results/config.json",
    log:
        "logs/workflow_config.log",
    params:
        # As a parameter, a changed configuration re-renders the report (compare: does not).
        config=runs.study_config(config),
    run:
        from ddpbench.io import atomic_write_json

        atomic_write_json(output[0], params.config)


rule html_report:
    input:
        summary="results/summary.json",
        config="results/config.json",
    output:
        html=report(
            "results/report.html",
            caption="../../report/report_html.rst",
            category="Report",
        ),
        plots=report(
            directory("results/plots"),
            patterns=["{name}.svg"],
            caption="../../report/plots.rst",
            category="Plots",
        ),
    log:
        "logs/report.log",
    conda:
        ENV
    shell:
        "python -m ddpbench.report --summary {input.summary} --config {input.config}"
        " --logs-dir logs/train --out {output.html} --plots-dir {output.plots} > {log} 2>&1"
        " || {{ tail -n 20 {log} >&2; exit 1; }}"


rule partial_report:
    # For a grid with failed or missing runs (after --keep-going): summary and report of the
    # runs that exist, listing the others. As a parameter, a new run re-renders it. With no run
    # yet, aggregation says so ("no finished run of this grid yet").
    input:
        config="results/config.json",
    output:
        csv="results/partial/summary.csv",
        json="results/partial/summary.json",
        html="results/partial/report.html",
        plots=directory("results/partial/plots"),
    log:
        "logs/partial_report.log",
    conda:
        ENV
    params:
        runs=existing_run_files,
        comm=lambda wildcards: [path for path in COMM_FILES if os.path.exists(path)],
        peak=lambda wildcards: "--peak results/peak.json" if os.path.exists("results/peak.json") else "",
        expected=RUN_ORDER,
        schema=workflow.source_path("../schemas/run.schema.json"),
    shell:
        "(python -m ddpbench.summary --runs {params.runs} --schema {params.schema}"
        " --config {input.config} --expect {params.expected} --comm {params.comm}"
        " --csv {output.csv} --json {output.json} {params.peak}"
        " && python -m ddpbench.report --summary {output.json} --config {input.config}"
        " --logs-dir logs/train --out {output.html} --plots-dir {output.plots}) > {log} 2>&1"
        " || {{ tail -n 20 {log} >&2; exit 1; }}"


# Seconds of work each: not worth a cluster job.
localrules:
    aggregate,
    workflow_config,
    html_report,
    partial_report,
