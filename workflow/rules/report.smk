# The report: every table of the paper with our numbers beside the paper's, Figures 4 and 5, the
# training curves, and the provenance of each number. The workflow's effective config goes beside it (and
# tells the report which runs fill which cells), and so does each Figure 5 (named as
# flatmix.report.figure5_file names it): the report folder reads the same wherever it is copied.


rule report:
    input:
        linear=linear_results(),
        knn=knn_results(),
        detections=detections(),
        flatness=flatness_outputs(),
    output:
        config=results("report/config.yaml"),
        markdown=report(results("report/report.md"), caption="../report/report.rst", category="Report"),
        html=report(results("report/report.html"), caption="../report/report.rst", category="Report"),
        figure4=report(results("report/figure4.png"), caption="../report/figure4.rst", category="Figures"),
        curves=report(results("report/curves.png"), caption="../report/curves.rst", category="Figures"),
        figure5=[results(f"report/figure5-{figure}.png") for figure in EXPERIMENTS.flatness],
    params:
        config=json.dumps(config, sort_keys=True),
        results=lambda wildcards, output: Path(output.markdown).parent.parent,
        out=lambda wildcards, output: Path(output.markdown).parent,
    resources:
        **job_resources("report"),
    log:
        results("logs/report.log"),
    shell:
        "printf '%s\\n' {params.config:q} > {output.config:q}"
        " && flatmix report --config {output.config:q} --results {params.results:q} --out {params.out:q}"
        " > {log:q} 2>&1"
