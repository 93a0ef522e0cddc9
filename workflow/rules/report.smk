rule aggregate:
    input:
        runs=run_files(),
        schema="workflow/schemas/run.schema.json",
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
    log:
        "logs/aggregate.log",
    conda:
        ENV
    params:
        expected=run_names(),
    shell:
        "python -m ddpbench.aggregate --runs {input.runs} --schema {input.schema}"
        " --expect {params.expected} --csv {output.csv} --json {output.json} > {log} 2>&1"


rule workflow_config:
    output:
        "results/config.json",
    log:
        "logs/workflow_config.log",
    params:
        # As a parameter, a changed configuration re-renders the report.
        config=config,
    run:
        from ddpbench.io import atomic_write_json

        atomic_write_json(output[0], params.config)


rule html_report:
    input:
        summary="results/summary.json",
        config="results/config.json",
        runs=run_files(),
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
        "python -m ddpbench.report --summary {input.summary} --config {input.config} --runs {input.runs}"
        " --logs-dir logs/train --out {output.html} --plots-dir {output.plots} > {log} 2>&1"


# Seconds of work each: not worth a cluster job.
localrules:
    aggregate,
    workflow_config,
    html_report,
