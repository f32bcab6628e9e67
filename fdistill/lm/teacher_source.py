"""Where the teacher's numbers come from in training: `TeacherSource`, resolved once from the settings.

:attr:`fdistill.lm.config.DistillArguments.teacher_source` builds it; the trainer, the batch-memory rule and the
model card read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TeacherSource:
    """Where the teacher's numbers come from in training, resolved once from the settings
    (:attr:`fdistill.lm.config.DistillArguments.teacher_source`); the trainer, the batch-memory rule and the model card read it.

    Attributes:
        kind: ``"model"`` (a teacher model in this process: its forwards), ``"columns"`` (its top-k log-probabilities
            stored beside the offline teacher samples, :data:`fdistill.lm.config.TOPK_COLUMNS`;
            ``teacher_topk_columns``), ``"server"`` (a vLLM server scores every completion set; ``teacher_server``)
            or ``"none"`` (the objective uses none).
        topk: log-probabilities per position the server is asked for (``teacher_server_topk``; server only).
        topk_mode: how a top-k teacher's missing tail counts (``teacher_topk_mode``; columns and server).
    """

    kind: Literal["model", "columns", "server", "none"]
    topk: int | None = None
    topk_mode: str | None = None

    @property
    def is_topk(self) -> bool:
        """Whether the teacher is its top k log-probabilities per position (no teacher forward)."""
        return self.kind in ("columns", "server")

    @property
    def setting(self) -> str | None:
        """The setting that chose a top-k source, as messages name it."""
        return {"columns": "teacher_topk_columns", "server": "teacher_server"}.get(self.kind)
