"""The effective label of a prediction, derived from all of its feedback (which is never overwritten).

The precedence rule, used on ingest and whenever there is too little overlap for a consensus model:

1. The most trusted source present decides: ``reviewer`` > ``annotator`` > ``agent`` > ``end_user`` > ``system``
   > ``rule`` (a labeling rule's vote, ``flywheel.domain.labeling_rules``: below every human source, so one
   person's label beats any number of rules).
2. Among reviewers, the latest decision wins (a correction of a correction); ``discard`` removes the prediction
   from training and SLA figures.
3. Among other sources of the same rank, each person (``source_id``) counts once, with their latest label; the
   majority wins, and a tie goes to the most recent label.

The label-quality pass (``flywheel.feedback.jobs``) refines rule 3 once there is enough overlap: it stores a
consensus per prediction (CROWDLAB, ``cleanlab.multiannotator``, or the rule with votes of sources excluded as
unreliable dropped), with the number of feedback rows it saw. ``apply_rule`` uses that stored consensus while the
prediction's feedback is unchanged and no reviewer has decided; new feedback falls back to the rule until the next
pass. The evaluation holdout is never scored, so its labels always follow the rule.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, text, update
from sqlalchemy.orm import Session

from flywheel.domain.partitions import feedback_of
from flywheel.models.label_quality import LabelQualityResult
from flywheel.models.records import Feedback, Prediction

SOURCE_PRIORITY = {"reviewer": 4, "annotator": 3, "agent": 2, "end_user": 1, "system": 0, "rule": -1}


@dataclass(frozen=True)
class Vote:
    label: str | None
    source: str
    source_id: str | None
    decision: str | None
    order: int  # position in time (created_at, then arrival)


@dataclass(frozen=True)
class Effective:
    label: str | None
    discarded: bool


def resolve(votes: Sequence[Vote]) -> Effective:
    """The effective label of one prediction from its feedback votes (see the module docstring)."""
    if not votes:
        return Effective(None, False)
    top = max(SOURCE_PRIORITY.get(v.source, 0) for v in votes)
    tier = sorted((v for v in votes if SOURCE_PRIORITY.get(v.source, 0) == top), key=lambda v: v.order)
    if tier[0].source == "reviewer":
        last = tier[-1]
        return Effective(None, True) if last.decision == "discard" else Effective(last.label, False)
    latest_by_person: dict[str, Vote] = {}
    for v in tier:
        latest_by_person[v.source_id or f"#{v.order}"] = v
    counts = Counter(v.label for v in latest_by_person.values())
    best = max(counts.values())
    tied = {label for label, n in counts.items() if n == best}
    winner = max((v for v in latest_by_person.values() if v.label in tied), key=lambda v: v.order)
    return Effective(winner.label, False)


def apply_rule(session: Session | Connection, predictions: Sequence[tuple[int, datetime]]) -> None:
    """Re-derive ``effective_label``, ``label_discarded`` and ``feedback_count`` for these ``(id, created_at)``
    predictions (the ``created_at`` names the month partition of each, and of its feedback, on PostgreSQL)."""
    if not predictions:
        return
    prediction_ids = [pid for pid, _ in predictions]
    votes: dict[int, list[Vote]] = defaultdict(list)
    rows = session.execute(
        select(Feedback.prediction_id, Feedback.label, Feedback.source, Feedback.source_id, Feedback.decision)
        .where(feedback_of(predictions))
        .order_by(Feedback.prediction_id, Feedback.created_at, Feedback.id)
    )
    for n, (pid, label, source, source_id, decision) in enumerate(rows):
        votes[pid].append(Vote(label, source, source_id, decision, n))
    consensus = {
        pid: (label, seen)
        for pid, label, seen in session.execute(
            select(
                LabelQualityResult.prediction_id,
                LabelQualityResult.consensus_label,
                LabelQualityResult.consensus_votes,
            ).where(
                LabelQualityResult.prediction_id.in_(prediction_ids),
                LabelQualityResult.consensus_label.is_not(None),
            )
        )
    }
    params = []
    for pid, created in predictions:
        eff = resolve(votes.get(pid, []))
        stored = consensus.get(pid)
        own = votes.get(pid, [])
        if stored is not None and stored[1] == len(own) and not any(v.source == "reviewer" for v in own):
            eff = Effective(stored[0], False)
        params.append(
            {
                "b_pid": pid,
                "b_created": created,
                "b_label": eff.label,
                "b_discarded": eff.discarded,
                "b_count": len(votes.get(pid, [])),
            }
        )
    _store(session.connection() if isinstance(session, Session) else session, params)


# PostgreSQL: every prediction's new values in one statement over arrays. One ``UPDATE`` per row on the partitioned
# table prunes its months anew for each row: three times the cost of this one statement (1,000 rows), measured.
_UPDATE_ARRAYS = text(
    "UPDATE predictions AS p SET effective_label = v.label, label_discarded = v.discarded, feedback_count = v.n "
    "FROM unnest(CAST(:ids AS integer[]), CAST(:created AS timestamptz[]), CAST(:labels AS varchar[]), "
    "CAST(:discarded AS boolean[]), CAST(:counts AS integer[])) AS v (id, created_at, label, discarded, n) "
    "WHERE p.id = v.id AND p.created_at = v.created_at"
)


def _store(conn: Connection, params: list[dict[str, Any]]) -> None:
    """Write the re-derived values, each row found by its id and ``created_at`` (its month's partition)."""
    if conn.dialect.name == "postgresql":
        arrays = {
            name: [p[key] for p in params]
            for name, key in (
                ("ids", "b_pid"),
                ("created", "b_created"),
                ("labels", "b_label"),
                ("discarded", "b_discarded"),
                ("counts", "b_count"),
            )
        }
        conn.execute(_UPDATE_ARRAYS, arrays)
        return
    table = Prediction.__table__
    conn.execute(
        update(table)  # type: ignore[arg-type]
        .where(table.c.id == bindparam("b_pid"), table.c.created_at == bindparam("b_created"))
        .values(
            effective_label=bindparam("b_label"),
            label_discarded=bindparam("b_discarded"),
            feedback_count=bindparam("b_count"),
        ),
        params,
    )
