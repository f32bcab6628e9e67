"""The experiments shipped with fdistill: the demo, the paper-claims study and the paper's datasets.

demo.py                 the embedded default: SmolLM2-135M-Instruct distilled into a 4-layer student on CPU
paper_claims.py         the f-DISTILL claims tested: every objective × several seeds from one shared start
paper_claims_report.py  that study's report: mean ± std over seeds, paired differences, the five claims
paper_data.py           the paper's four datasets as prompt / reference columns

Why a package of their own: these modules are experiments built on the library (their stages, sizes, verdicts
and reports), not command plumbing. `fdistill.cli` keeps the thin command entry points (`fdistill demo`,
`fdistill paper-claims`, ``python -m fdistill.cli.paper_data``) that parse options and call in here, and
re-exports these modules' names under their old paths (``fdistill.cli.demo`` and so on).
"""
