"""All tables. Importing this package registers every table on ``Base.metadata`` (Alembic and tests rely on it)."""

from flywheel.core.db import Base
from flywheel.models.app_secrets import AppSecret  # noqa: F401
from flywheel.models.label_quality import (  # noqa: F401
    EmbeddingCache,
    LabelingRule,
    LabelQualityResult,
    LabelQualityRun,
    LabelSourceStat,
)
from flywheel.models.records import ApiKey, Feedback, Prediction, Task, Tenant
from flywheel.models.rights import Erasure  # noqa: F401
from flywheel.models.slas import Alert, DriftReport, Sla, SlaChange, SlaEvaluation  # noqa: F401
from flywheel.models.training import (  # noqa: F401
    ChampionSlot,
    JobLock,
    JobRun,
    ModelTrainingRow,
    ModelVersion,
    TrainingRun,
)

__all__ = ["ApiKey", "Base", "Feedback", "Prediction", "Task", "Tenant"]
