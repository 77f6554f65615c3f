"""The shapes of what the client sends (TypedDicts, for editors and type checkers) and of ingestion results.

Every method also accepts plain dicts: these types only document the fields of API.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Required, TypedDict

__all__ = ["FeedbackItem", "FeedbackSource", "IngestResult", "PredictInput", "PredictionItem", "ReviewKind"]

FeedbackSource = Literal["end_user", "agent", "annotator", "reviewer", "system"]
ReviewKind = Literal["label_issue", "uncertain"]


class PredictionItem(TypedDict, total=False):
    """One item of ``POST /v1/predictions``. ``id`` (1–128 of ``[A-Za-z0-9._:-]``) is the idempotency key."""

    id: Required[str]
    task: Required[str]
    text: Required[str]
    label: Required[str]
    confidence: Required[float]
    probabilities: dict[str, float]
    model_version: str
    created_at: str | datetime  # a naive datetime is taken as UTC
    metadata: dict[str, Any]


class FeedbackItem(TypedDict, total=False):
    """One item of ``POST /v1/feedback``: a label for an earlier prediction, by its ``prediction_id``."""

    id: Required[str]
    prediction_id: Required[str]
    label: Required[str]
    source: Required[FeedbackSource]
    source_id: str
    created_at: str | datetime


class PredictInput(TypedDict, total=False):
    """One input of ``POST /v1/predict``; the server makes up an ``id`` when there is none."""

    text: Required[str]
    id: str
    metadata: dict[str, Any]
    created_at: str | datetime


@dataclass(frozen=True)
class IngestResult:
    """What ``POST /v1/predictions`` or ``POST /v1/feedback`` answered, summed over the requests of one call:
    ``accepted`` items were stored now, ``duplicates`` had been stored before with the same content."""

    accepted: int = 0
    duplicates: int = 0

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(self.accepted + other.accepted, self.duplicates + other.duplicates)
