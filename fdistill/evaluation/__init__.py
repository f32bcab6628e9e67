"""Evaluation: sequence-level divergences and risks, text metrics, and reports.

metrics.py       Monte Carlo sequence-level KL / RKL / JS / TVD bound, R_llh and R_cvg (f-DISTILL §4.5)
text_metrics.py  BLEU / chrF / TER / ROUGE / BERTScore / distinct-n / TeacherDist, tokenised for every script
report.py        evaluate_model, teacher_diversity, results.json / results.md / the risks plot, combining runs
"""
