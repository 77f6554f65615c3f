"""All tables. Importing this package registers every table on ``Base.metadata`` (Alembic and tests rely on it)."""

from flywheel.db import Base
from flywheel.models.core import ApiKey, Feedback, Prediction, Task, Tenant
from flywheel.models.labels import EmbeddingCache, LabelQualityResult, LabelQualityRun, LabelSourceStat  # noqa: F401
from flywheel.models.monitoring import Alert, DriftReport, Sla, SlaChange, SlaEvaluation  # noqa: F401
from flywheel.models.registry import ChampionSlot, JobLock, JobRun, ModelVersion, TrainingRun  # noqa: F401

__all__ = ["ApiKey", "Base", "Feedback", "Prediction", "Task", "Tenant"]
