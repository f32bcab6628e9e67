"""The `fdistill` command: offline teacher sampling, training from a YAML recipe, evaluation, and the demo.

fdistill sample --teacher gpt2 --data prompts.jsonl --output teacher_samples
fdistill train recipes/smollm2.yaml max_steps=100 objective=js
fdistill flows experiment recipes/flows/digits_glow.yaml   # normalizing-flow distillation (fdistill.flows)
fdistill vocoder gaussian --out docs/vocoder/gaussian       # probability density distillation (fdistill.vocoder)
fdistill diffusion experiment recipes/diffusion/toy2d.yaml  # few-step diffusion distillation (fdistill.diffusion)
accelerate launch -m fdistill.cli sample ...      # several processes share the work

entry.py     `main`: the parser of every sub-command, dispatch, the one-line error rule, Ctrl-C
common.py    what the sub-commands share: --config YAML defaults, required options, `Interrupted`
sample.py    `fdistill sample`     train.py  `fdistill train` (recipes: `RunArguments`, `load_recipe`)
evaluate.py  `fdistill evaluate`   demo.py, paper_claims.py  `fdistill demo | paper-claims` (fdistill.studies)
"""

from fdistill.cli.common import Interrupted
from fdistill.cli.entry import RESEARCH_COMMANDS, main
from fdistill.cli.entry import _log_to_stderr as _log_to_stderr  # the tests' import paths
from fdistill.cli.train import RunArguments, build_trainer, load_recipe
from fdistill.cli.train import _train_interrupted as _train_interrupted

__all__ = ["RESEARCH_COMMANDS", "Interrupted", "RunArguments", "build_trainer", "load_recipe", "main"]
