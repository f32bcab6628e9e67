"""The language-model trainer wing: f-DISTILL for transformers.

    config.py      FDistillConfig / DistillArguments: every setting documented and validated
    objectives.py  the objective registry (kl, rkl, js, tvd, mle, seqkd, engine, predistill, yours)
    trainer.py     FDistillTrainer / FDistillMixin: forwards, one objective call, logging
    data.py        collators (encoder–decoder and decoder-only, prompt/completion masks), prompt checks
    sampling.py    online sampling (the one generate() call), its clean generation config
    offline.py     offline teacher sampling to a datasets dataset (sample_offline); its folder: offline_store.py
    student.py     students from teachers (layer copying), LoRA wrapping
    loading.py     data from Hub names, folders and data files; content fingerprints (cached file digests)
    model_loading.py  models and tokenizers from Hub names, folders and GGUF files (converted once, cached)
    hub.py         model cards and Hub upload
    hub_checkpoints.py  checkpoints pushed while training (hub_strategy) and resuming from the Hub

The public names are importable from ``fdistill`` itself (``from fdistill import FDistillTrainer``).
"""
