"""The evaluation holdout: the one home of the rule that decides which predictions never train.

Every prediction gets a stable bucket 0-99 from its client id when it is ingested; the holdout of each
(tenant, task) is the predictions whose bucket is below ``holdout_percent``. Training, label-quality passes and
the gate all read the split from here, so it can never drift between them.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import ColumnElement

from flywheel.models.records import Prediction


def holdout_bucket(client_id: str) -> int:
    """A stable 0-99 bucket from the client id (blake2b, so every process and database agrees)."""
    return int.from_bytes(hashlib.blake2b(client_id.encode(), digest_size=8).digest(), "big") % 100


def is_holdout(bucket: int, holdout_percent: int) -> bool:
    """Whether a prediction in ``bucket`` belongs to the evaluation holdout."""
    return bucket < holdout_percent


def in_holdout(holdout_percent: int) -> ColumnElement[bool]:
    """The SQL condition selecting holdout predictions."""
    return Prediction.bucket < holdout_percent


def outside_holdout(holdout_percent: int) -> ColumnElement[bool]:
    """The SQL condition selecting the training pool: every prediction outside the holdout."""
    return Prediction.bucket >= holdout_percent
