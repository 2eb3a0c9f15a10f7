# The report: every table of the paper with our numbers beside the paper's, Figures 4 and 5, the
# training curves, and the provenance of each number. The workflow's effective config goes beside it (and
# tells the report which runs fill which cells), and so does each Figure 5 (named as
# flatmix.report.figure5_file names it): the report folder reads the same wherever it is copied.


rule workflow_config:
    """The effective config, beside the report; written by Snakemake itself (no job, no command line that
    would echo kilobytes of it), again whenever the config changes (a params change)."""
    output:
        results("report/config.yaml"),
    params:
        config=json.dumps(config, sort_keys=True),
    log:
        results("logs/workflow_config.log"),
    localrule: True
    run:
        atomic.write_text(output[0], f"{params.config}\n")
        atomic.write_text(log[0], f"wrote {output[0]}\n")


rule report:
    input:
        config=rules.workflow_config.output,
        linear=linear_results(),
        knn=knn_results(),
        detections=detections(),
        flatness=flatness_outputs(),
    output:
        markdown=report(results("report/report.md"), caption="../report/report.rst", category="Report"),
        html=report(results("report/report.html"), caption="../report/report.rst", category="Report"),
        figure=report(results(f"report/{'knn' if EXPERIMENTS.cifar else 'figure4'}.png"),
                      caption=f"../report/{'knn' if EXPERIMENTS.cifar else 'figure4'}.rst", category="Figures"),
        curves=report(results("report/curves.png"), caption="../report/curves.rst", category="Figures"),
        figure5=[results(f"report/figure5-{figure}.png") for figure in EXPERIMENTS.flatness],
    params:
        results=lambda wildcards, output: Path(output.markdown).parent.parent,
        out=lambda wildcards, output: Path(output.markdown).parent,
    resources:
        **job_resources("report"),
    log:
        results("logs/report.log"),
    shell:
        "flatmix report --config {input.config:q} --results {params.results:q} --out {params.out:q}"
        " > {log:q} 2>&1"
