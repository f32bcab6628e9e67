"""The validators and stage storage the flows wing uses, under the names other modules import from here.

The validators of settings and data live in `fdistill.checks`, the saved stages (safetensors + JSON, never a
pickle) in `fdistill.stages`; both are re-exported here.
"""

from __future__ import annotations

from fdistill.checks import choice, finite_rows, names, number, output_folder, whole_number, whole_numbers  # noqa: F401
from fdistill.stages import StageFileError, load_stage, read_stage_json, refuse_pickled_stage, save_stage  # noqa: F401
