"""Models: every forward returns ``mlcnc.models.output.ModelOutput``."""

from mlcnc.models.mlcnc import MLCNC, create_mlcnc
from mlcnc.models.output import ModelOutput

__all__ = ["MLCNC", "ModelOutput", "create_mlcnc"]
