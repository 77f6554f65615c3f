"""Request and response schemas of the core API, declared once: they validate requests and generate OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator

ClientId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
LabelName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Source = Literal["end_user", "agent", "annotator", "reviewer", "system"]
Scope = Literal["ingest", "read", "admin"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProblemItem(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[ProblemItem] | None = None


# --- tenants and keys -------------------------------------------------------------------------------------------


class TenantIn(Strict):
    slug: Name
    name: str = Field(min_length=1, max_length=200)
    webhook_url: str | None = Field(default=None, max_length=2000)


class TenantOut(BaseModel):
    """A tenant."""

    slug: str
    name: str
    webhook_url: str | None
    created_at: datetime


class TenantList(BaseModel):
    """Tenants."""

    items: list[TenantOut]


class KeyIn(Strict):
    tenant: Name | None = None
    scopes: list[Scope] = Field(min_length=1)
    name: str | None = Field(default=None, max_length=200)


class KeyOut(BaseModel):
    """An API key's public description (never its secret)."""

    id: int
    tenant: str | None
    prefix: str
    scopes: list[str]
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    """A new key: ``key`` is shown this once and cannot be recovered."""

    key: str


class KeyList(BaseModel):
    """API keys."""

    items: list[KeyOut]


# --- tasks ------------------------------------------------------------------------------------------------------


class TaskIn(Strict):
    name: Name
    labels: list[LabelName] = Field(min_length=2, max_length=10_000)
    description: str = Field(default="", max_length=10_000)
    label_descriptions: dict[str, str] = Field(
        default_factory=dict, description="optional description per label, used by the zero-shot model"
    )
    base_model: str | None = Field(default=None, description="a local save_pretrained directory")

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        seen: set[str] = set()
        dupes = sorted({x for x in labels if x in seen or seen.add(x)})  # type: ignore[func-returns-value]
        if dupes:
            raise ValueError(f"labels must be unique; repeated: {', '.join(dupes)}")
        return labels


class TaskOut(BaseModel):
    """A task: one classification problem with a fixed label set."""

    name: str
    labels: list[str]
    description: str
    label_descriptions: dict[str, str]
    base_model: str | None
    created_at: datetime


class TaskList(BaseModel):
    """Tasks."""

    items: list[TaskOut]


# --- predictions ------------------------------------------------------------------------------------------------


class PredictionIn(Strict):
    id: ClientId
    task: Name
    text: str = Field(min_length=1, max_length=100_000)
    label: LabelName
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] | None = None
    model_version: str | None = Field(default=None, max_length=200)
    created_at: AwareDatetime | None = None
    metadata: dict[str, Any] | None = None


class PredictionBatch(Strict):
    predictions: list[PredictionIn] = Field(min_length=1)


class IngestResult(BaseModel):
    """How many items were stored, and how many were already stored (replays)."""

    accepted: int
    duplicates: int


class FeedbackOut(BaseModel):
    """One feedback item."""

    id: str
    label: str | None
    source: str
    source_id: str | None
    decision: str | None = None
    note: str | None = None
    created_at: datetime


class PredictionOut(BaseModel):
    """A prediction as posted, with its feedback (oldest first) and derived effective label."""

    id: str
    task: str
    text: str
    label: str
    confidence: float
    probabilities: dict[str, float] | None
    model_version: str | None
    created_at: datetime
    metadata: dict[str, Any] | None
    feedback: list[FeedbackOut]
    effective_label: str | None = None
    label_discarded: bool = False


class PredictionPage(BaseModel):
    """A page of predictions, newest first."""

    items: list[PredictionOut]
    next_cursor: str | None


class PredictionQuery(Strict):
    task: Name | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    has_feedback: bool | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=200)
    tenant: Name | None = Field(default=None, description="admin keys only: the tenant to read")


class TenantQuery(Strict):
    tenant: Name | None = Field(default=None, description="admin keys only: the tenant to read")


# --- feedback ---------------------------------------------------------------------------------------------------


class FeedbackIn(Strict):
    id: ClientId
    prediction_id: ClientId
    label: LabelName
    source: Source
    source_id: str | None = Field(default=None, max_length=200)
    created_at: AwareDatetime | None = None


class FeedbackBatch(Strict):
    feedback: list[FeedbackIn] = Field(min_length=1)
