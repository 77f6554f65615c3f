"""Request and response schemas of the core API, declared once: they validate requests and generate OpenAPI.

The generated document states every rule a request must follow that a JSON Schema can state (patterns, bounds,
``uniqueItems``, conditionals), and the server enforces each one; rules that depend on stored data (a task's labels,
an existing prediction) are stated in the descriptions and answered with 404, 409 or 422.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic import Strict as StrictInput

ClientId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000)")
    return value


# Text the database stores: anything but NUL, which a PostgreSQL text column cannot hold. Stated as ``not`` a
# pattern rather than as a pattern for the whole string: beside a large ``maxLength`` that makes generating examples
# slow. (Length constraints go before the check, in one ``Annotated``, for pydantic's plain length messages.)
NoNul = AfterValidator(_no_nul)
NO_NUL_SCHEMA = Field(json_schema_extra={"not": {"pattern": "\\x00"}})
SafeStr = Annotated[str, NoNul, NO_NUL_SCHEMA]
LabelName = Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul, NO_NUL_SCHEMA]
ShortText = Annotated[str, StringConstraints(max_length=200), NoNul, NO_NUL_SCHEMA]
LongText = Annotated[str, StringConstraints(max_length=10_000), NoNul, NO_NUL_SCHEMA]
Source = Literal["end_user", "agent", "annotator", "reviewer", "system"]
Scope = Literal["ingest", "read", "admin"]
#: Database ids: the integers a 32-bit signed column holds (PostgreSQL ``integer``).
MAX_ID = 2**31 - 1


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON numbers in request bodies: a number is a JSON number (not a string or a boolean, which pydantic's lax mode
# would convert), and an integer is one without a fractional part (JSON Schema counts 7.0 as an integer).
Number = StrictFloat
Integer = Annotated[int, BeforeValidator(_integral), StrictInput()]


def _query_int(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"-?[0-9]+", value):
        raise ValueError("must be an integer, in decimal digits")
    return value


def _query_bool(value: Any) -> Any:
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value


# Query parameters arrive as text: an integer is decimal digits (not "1_0" or "10.0", which pydantic's lax mode
# would read), a boolean is "true" or "false" (not "yes" or "1").
QueryInt = Annotated[int, BeforeValidator(_query_int)]
QueryBool = Annotated[bool, BeforeValidator(_query_bool)]

# RFC 3339 date-times whose instant every backend can store: years 0002-9998, so that any UTC offset stays within
# Python's years 1-9999 (``0001-01-01T00:00:00+01:00`` is year 0 in UTC). Upper-case ``T`` and ``Z`` and at most six
# fractional digits, as pydantic reads them.
TIMESTAMP_PATTERN = (
    r"^(000[2-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
    r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


def _timestamp_text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with a UTC offset, e.g. 2026-11-27T01:00:00Z")
    return value


def _storable(value: datetime) -> datetime:
    try:
        value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("is outside the range of storable instants (years 0002-9998)") from None
    return value


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_timestamp_text),
    AfterValidator(_storable),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN}),
]

# An http(s) URL: a host name (up to 11 dot-separated labels of letters, digits and inner hyphens), an optional port
# (0-65535), path and query, in RFC 3986 characters. Every string it matches is a valid URI (``format: uri``) of at
# most 1,920 characters: the pattern bounds the length itself (a ``maxLength`` beside a pattern this size makes
# generating examples, for a client or a fuzzer, very slow).
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_PCHAR = r"(%[0-9A-Fa-f]{2}|[A-Za-z0-9._~!$&'()*+,;=:@-])"
URL_PATTERN = (
    rf"^https?://{_LABEL}(\.{_LABEL}){{0,10}}(:{_PORT})?(/({_PCHAR}|/){{0,300}})?(\?({_PCHAR}|[/?]){{0,100}})?$"
)

HttpUrl = Annotated[
    str,
    StringConstraints(pattern=URL_PATTERN),
    WithJsonSchema({"type": "string", "format": "uri", "pattern": URL_PATTERN}),
]


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
    name: SafeStr = Field(min_length=1, max_length=200)
    webhook_url: HttpUrl | None = Field(default=None, description="an http(s) URL for alerts")


class TenantOut(BaseModel):
    """A tenant, with its data-rights settings: ``share_labels`` (may its labels train the shared models),
    ``retention_days`` (null: kept until erased) and ``status`` (``deleting`` while its deletion runs)."""

    slug: str
    name: str
    webhook_url: str | None
    created_at: datetime
    share_labels: bool = True
    retention_days: int | None = None
    status: Literal["active", "deleting"] = "active"


class TenantPatch(Strict):
    """Data-rights settings; a field left out is unchanged."""

    share_labels: StrictBool | None = Field(
        default=None,
        description="false: the tenant's labels train only its own variant, never a shared model; turning it off "
        "taints the shared models that used them (absent or null: unchanged)",
    )
    retention_days: Annotated[int, Field(ge=1, le=36_500), BeforeValidator(_integral), StrictInput()] | None = Field(
        default=None,
        description="predictions (and their feedback) older than this many days are erased nightly; null: kept "
        "until erased (absent: unchanged)",
    )


class TenantDelete(Strict):
    confirm: Name = Field(description="the tenant's slug again, so that a tenant is never deleted by a typo")


class TenantList(BaseModel):
    """Tenants."""

    items: list[TenantOut]


class KeyIn(Strict):
    """A key without a tenant is an admin key: it must have the ``admin`` scope."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # Without a tenant (absent or null), the scopes must include "admin".
            "if": {"properties": {"tenant": {"type": "null"}}},
            "then": {"properties": {"scopes": {"contains": {"const": "admin"}}}},
        },
    )

    tenant: Name | None = Field(default=None, description="the key's tenant; absent or null: an admin key")
    scopes: list[Scope] = Field(min_length=1, description="repeats are ignored")
    name: ShortText | None = None


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
    labels: list[LabelName] = Field(
        min_length=2, max_length=10_000, json_schema_extra={"uniqueItems": True}, description="unique label names"
    )
    description: SafeStr = Field(default="", max_length=10_000)
    label_descriptions: dict[LabelName, LongText] = Field(
        default_factory=dict,
        description="optional description per label, used by the zero-shot model; each key is one of `labels` (422)",
    )
    base_model: Annotated[str, StringConstraints(max_length=1000), NoNul, NO_NUL_SCHEMA] | None = Field(
        default=None, description="a local save_pretrained directory"
    )

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
    """One prediction. Rules that depend on the task (422, by item index): ``task`` exists, ``label`` is one of its
    labels; ``probabilities``, when given, has only task labels, values summing to 1 within 1e-3, the highest one for
    ``label``, and ``confidence`` as its value. An ``id`` already stored with other content: 409."""

    id: ClientId = Field(description="the client's id and idempotency key, unique per tenant")
    task: Name = Field(description="an existing task")
    text: SafeStr = Field(min_length=1, max_length=100_000)
    label: LabelName = Field(description="one of the task's labels")
    confidence: Number = Field(ge=0.0, le=1.0)
    probabilities: dict[LabelName, Annotated[Number, Field(ge=0.0, le=1.0)]] | None = None
    model_version: ShortText | None = None
    in_sample: StrictBool = Field(
        default=False,
        description="the model that produced `probabilities` trained on this item: they then never judge its label",
    )
    created_at: Timestamp | None = Field(default=None, description="when the prediction was made; default now")
    metadata: dict[str, Any] | None = None


class PredictionBatch(Strict):
    """Up to the configured limit of items (1,000 by default; 413 above), atomic: any bad item rejects the batch
    (422, every bad item by index). Items are unique by ``id`` (one repeated with other content: 422)."""

    predictions: list[PredictionIn] = Field(min_length=1, json_schema_extra={"x-limit": "max_batch_items"})


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
    in_sample: bool = False
    created_at: datetime
    metadata: dict[str, Any] | None
    feedback: list[FeedbackOut]
    effective_label: str | None = None
    label_discarded: bool = False


class PredictionPage(BaseModel):
    """A page of predictions, newest first."""

    items: list[PredictionOut]
    next_cursor: str | None


#: ``next_cursor`` of a page: the last item's time (microseconds since the Unix epoch) and its row id.
CURSOR_PATTERN = r"^-?[0-9]{1,18}\.[0-9]{1,10}$"
#: ``next_cursor`` of a review-queue page: the group (2: flagged holdout labels, 1: other flagged labels, 0: the rest),
#: the sort score's IEEE 754 bits in hex, the row id.
REVIEW_CURSOR_PATTERN = r"^[012]_[0-9a-f]{16}_[0-9]{1,10}$"

TENANT_PARAMETER = (
    "the tenant to act on. Required with an admin key that belongs to no tenant (422 without it); a tenant's key "
    "may omit it or name its own tenant (any other: 404)"
)


class PredictionQuery(Strict):
    task: Name | None = Field(default=None, description="only this task's predictions (404 if it does not exist)")
    since: Timestamp | None = Field(default=None, description="created at or after")
    until: Timestamp | None = Field(default=None, description="created before")
    has_feedback: QueryBool | None = None
    limit: QueryInt = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(
        default=None, pattern=CURSOR_PATTERN, description="the previous page's `next_cursor` (treat it as opaque)"
    )
    tenant: Name | None = Field(default=None, description=TENANT_PARAMETER)


class TenantQuery(Strict):
    tenant: Name | None = Field(default=None, description=TENANT_PARAMETER)


# --- data rights ------------------------------------------------------------------------------------------------


class ErasureIn(Strict):
    """Exactly one of ``prediction_ids`` (up to 1,000 of the tenant's prediction ids; unknown ones count zero) or
    ``user_id`` (every prediction whose ``metadata.user_id`` is this value)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["prediction_ids"]}, {"required": ["user_id"]}]},
    )

    # (Neither is nullable: a field is given or left out, and the check below needs exactly one given.)
    prediction_ids: list[ClientId] = Field(default_factory=list, min_length=1, max_length=1000)
    user_id: Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul, NO_NUL_SCHEMA] = Field(
        default="", description="the value of `metadata.user_id` whose predictions to erase"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ErasureIn:
        if ("prediction_ids" in self.model_fields_set) == ("user_id" in self.model_fields_set):
            raise ValueError("give exactly one of prediction_ids and user_id")
        return self


class ErasureOut(BaseModel):
    """What was erased, per kind of record (all zero when nothing matched: erasure is idempotent), and how many
    model versions it tainted (they trained on an erased record)."""

    predictions: int
    feedback: int
    review_decisions: int
    label_quality_results: int
    embeddings: int
    training_rows: int
    models_tainted: int


class ExportQuery(Strict):
    task: Name = Field(description="the task whose predictions to export (404 if it does not exist)")
    format: Literal["jsonl", "parquet"] = "jsonl"
    tenant: Name | None = Field(default=None, description=TENANT_PARAMETER)


# --- feedback ---------------------------------------------------------------------------------------------------


class FeedbackIn(Strict):
    """One feedback item. Rules that depend on stored data (422, by item index): ``prediction_id`` is one of the
    tenant's predictions and ``label`` one of its task's labels. An ``id`` already stored with other content: 409."""

    id: ClientId = Field(description="the feedback's idempotency key, unique per tenant")
    prediction_id: ClientId = Field(description="the id of a prediction of the same tenant")
    label: LabelName = Field(description="one of the prediction's task's labels")
    source: Source
    source_id: ShortText | None = None
    created_at: Timestamp | None = Field(default=None, description="when the feedback was given; default now")


class FeedbackBatch(Strict):
    """As for predictions: up to the configured limit of items (413 above), atomic, unique by ``id``."""

    feedback: list[FeedbackIn] = Field(min_length=1, json_schema_extra={"x-limit": "max_batch_items"})


# --- labeling rules -----------------------------------------------------------------------------------------------

RuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
Keyword = Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul, NO_NUL_SCHEMA]


class KeywordsRuleIn(Strict):
    """Votes ``label`` when any keyword or phrase occurs in the text, case-insensitively, on word boundaries."""

    name: RuleName = Field(description="unique within the task; the votes' source_id")
    label: LabelName = Field(description="one of the task's labels")
    kind: Literal["keywords"]
    keywords: list[Keyword] = Field(min_length=1, max_length=100)


class RegexRuleIn(Strict):
    """Votes ``label`` when the Python ``re`` pattern is found in the text (case-sensitive unless it starts with
    ``(?i)``); a pattern that does not compile is a 422 naming the rule."""

    name: RuleName = Field(description="unique within the task; the votes' source_id")
    label: LabelName = Field(description="one of the task's labels")
    kind: Literal["regex"]
    pattern: Annotated[str, StringConstraints(min_length=1, max_length=1000), NoNul, NO_NUL_SCHEMA]


RuleIn = Annotated[KeywordsRuleIn | RegexRuleIn, Field(discriminator="kind")]


class RulesIn(Strict):
    """The complete rule set of the scope (it replaces the previous one); names unique."""

    rules: list[RuleIn] = Field(max_length=1000)
