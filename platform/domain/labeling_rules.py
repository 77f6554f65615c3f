"""Labeling rules (weak supervision): keywords or regular expressions that vote for a label.

A task's rules are shared (set by an admin, applied to every tenant) or a tenant's own. A rule's vote on a logged
prediction is a feedback row with ``source = "rule"`` and ``source_id = <rule name>``, so every consumer of
feedback sees it as one more annotator: the effective-label rule ranks it below every human source
(``flywheel.domain.effective``), the label-quality pass measures each rule's reliability and can exclude a bad
one, and training reads the labels it produced at their weight. Rule votes are derived data: unlike human feedback
they are brought in line with the current rules (new predictions at ingest, old ones by the nightly back-fill), so
a changed or removed rule takes its old votes with it.

Keywords and phrases match case-insensitively on word boundaries (a phrase's spaces match any whitespace);
patterns are Python ``re`` syntax, case-sensitive unless they start with ``(?i)``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, exists, func, select
from sqlalchemy.orm import Session

from flywheel.core.db import utcnow
from flywheel.core.errors import Unprocessable
from flywheel.domain.effective import apply_rule
from flywheel.domain.partitions import delete_feedback, feedback_joins_prediction, feedback_of, insert_feedback
from flywheel.domain.schemas import KeywordsRuleIn, RegexRuleIn
from flywheel.models.label_quality import LabelingRule
from flywheel.models.records import Feedback, Prediction, Task

RULE_SOURCE = "rule"
_CHUNK = 500


@dataclass(frozen=True)
class Matcher:
    """One compiled rule."""

    name: str
    label: str
    regex: re.Pattern[str]

    def votes_on(self, text: str) -> bool:
        return self.regex.search(text) is not None


def compile_rule(kind: str, keywords: Sequence[str] | None, pattern: str | None) -> re.Pattern[str]:
    """The regular expression of a rule; ``re.error`` for a pattern that does not compile."""
    if kind == "keywords":
        words = [r"\s+".join(re.escape(part) for part in kw.split()) for kw in keywords or () if kw.strip()]
        if not words:  # only blank keywords: a rule that never votes
            return re.compile(r"(?!)")
        return re.compile(rf"(?<!\w)(?:{'|'.join(words)})(?!\w)", re.IGNORECASE)
    return re.compile(pattern or "")


def rules_in_scope(session: Session, task_id: int, tenant_id: int | None) -> list[LabelingRule]:
    """The shared rules of the task, then (for a tenant) the tenant's own, each in the order they were given."""
    keys = [0] if tenant_id is None else [0, tenant_id]
    return list(
        session.scalars(
            select(LabelingRule)
            .where(LabelingRule.task_id == task_id, LabelingRule.tenant_key.in_(keys))
            .order_by(LabelingRule.tenant_key, LabelingRule.position)
        )
    )


def matchers_for(db: Session | Connection, task_ids: Sequence[int], tenant_id: int) -> dict[int, list[Matcher]]:
    """Task id -> the compiled rules that apply to ``tenant_id``'s predictions (shared ones and its own)."""
    t = LabelingRule.__table__
    rows = db.execute(
        select(t.c.task_id, t.c.name, t.c.label, t.c.kind, t.c.keywords, t.c.pattern)
        .where(t.c.task_id.in_(list(task_ids)), t.c.tenant_key.in_([0, tenant_id]))
        .order_by(t.c.task_id, t.c.tenant_key, t.c.position)
    )
    out: dict[int, list[Matcher]] = defaultdict(list)
    for task_id, name, label, kind, keywords, pattern in rows:
        out[task_id].append(Matcher(name, label, compile_rule(kind, keywords, pattern)))
    return out


def replace_rules(
    session: Session, task: Task, tenant_id: int | None, rules: Sequence[KeywordsRuleIn | RegexRuleIn]
) -> list[LabelingRule]:
    """Replace the scope's rules (shared when ``tenant_id`` is None) after checking every one: a label of the task,
    a pattern that compiles, a name used once (and, for a tenant, not a shared rule's). 422 lists every bad rule."""
    errors: list[dict[str, object]] = []
    seen: set[str] = set()
    shared = set() if tenant_id is None else {r.name for r in rules_in_scope(session, task.id, None)}
    for i, rule in enumerate(rules):
        if rule.name in seen or rule.name in shared:
            errors.append({"loc": ["rules", i, "name"], "msg": f"rule '{rule.name}': the name is already used"})
        seen.add(rule.name)
        if rule.label not in task.labels:
            msg = f"rule '{rule.name}': '{rule.label}' is not a label of task '{task.name}'"
            errors.append({"loc": ["rules", i, "label"], "msg": msg})
        if isinstance(rule, RegexRuleIn):
            try:
                re.compile(rule.pattern)
            except re.error as exc:
                errors.append({"loc": ["rules", i, "pattern"], "msg": f"rule '{rule.name}': bad pattern: {exc}"})
    if errors:
        raise Unprocessable(f"{len(errors)} problem(s) in {len(rules)} rules; nothing was stored", errors=errors)
    key = tenant_id or 0
    session.execute(delete(LabelingRule).where(LabelingRule.task_id == task.id, LabelingRule.tenant_key == key))
    rows = [
        LabelingRule(
            task_id=task.id,
            tenant_key=key,
            tenant_id=tenant_id,
            name=rule.name,
            label=rule.label,
            kind=rule.kind,
            keywords=list(rule.keywords) if isinstance(rule, KeywordsRuleIn) else None,
            pattern=rule.pattern if isinstance(rule, RegexRuleIn) else None,
            position=i,
            created_at=utcnow(),
        )
        for i, rule in enumerate(rules)
    ]
    session.add_all(rows)
    session.flush()
    return rows


def _vote_row(
    tenant_id: int, prediction_id: int, created_at: datetime, matcher: Matcher, now: object
) -> dict[str, object]:
    payload = {"label": matcher.label, "source": RULE_SOURCE, "source_id": matcher.name}
    return {
        "tenant_id": tenant_id,
        "prediction_id": prediction_id,
        "prediction_created_at": created_at,
        "client_id": f"~rule:{matcher.name}:{prediction_id}",  # "~" is never in a client's id: no collision
        "label": matcher.label,
        "source": RULE_SOURCE,
        "source_id": matcher.name,
        "decision": None,
        "note": None,
        "created_at": now,
        "received_at": now,
        "content_hash": hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest(),
    }


def apply_rules(db: Session | Connection, tenant_id: int, prediction_ids: Sequence[int]) -> int:
    """Bring the rule votes on these predictions of ``tenant_id`` in line with the current rules: add the votes
    of rules that match, remove those of rules that no longer exist, match or vote the same label; then re-derive
    the effective label of every prediction whose votes changed. Idempotent. Returns the number of votes added."""
    added = 0
    for start in range(0, len(prediction_ids), _CHUNK):
        added += _apply_chunk(db, tenant_id, list(prediction_ids[start : start + _CHUNK]))
    return added


def _apply_chunk(db: Session | Connection, tenant_id: int, ids: list[int]) -> int:
    preds = db.execute(
        select(Prediction.id, Prediction.task_id, Prediction.text, Prediction.created_at).where(
            Prediction.tenant_id == tenant_id, Prediction.id.in_(ids)
        )
    ).all()
    if not preds:
        return 0
    created = {pid: at for pid, _, _, at in preds}
    matchers = matchers_for(db, sorted({task_id for _, task_id, _, _ in preds}), tenant_id)
    wanted = {
        (pid, m.name): m for pid, task_id, text, _ in preds for m in matchers.get(task_id, []) if m.votes_on(text)
    }
    have = {
        (pid, name): (fid, label)
        for fid, pid, name, label in db.execute(
            select(Feedback.id, Feedback.prediction_id, Feedback.source_id, Feedback.label).where(
                feedback_of(created.items()), Feedback.source == RULE_SOURCE
            )
        )
    }
    stale = [(key, fid) for key, (fid, label) in have.items() if key not in wanted or wanted[key].label != label]
    if stale:
        stale_of = {pid: created[pid] for (pid, _), _ in stale}
        delete_feedback(db, feedback_of(stale_of.items()) & Feedback.id.in_([fid for _, fid in stale]))
    stale_keys = {key for key, _ in stale}
    kept = {key for key in have if key not in stale_keys}
    now = utcnow()
    new = [(pid, m) for (pid, name), m in wanted.items() if (pid, name) not in kept]
    insert_feedback(db, [_vote_row(tenant_id, pid, created[pid], m, now) for pid, m in new])
    changed = {pid for (pid, _), _ in stale} | {pid for pid, _ in new}
    apply_rule(db, sorted((pid, created[pid]) for pid in changed))
    return len(new)


def backfill_rules(session: Session, task_id: int) -> int:
    """Apply the task's current rules to every logged prediction of the task (the nightly pass): returns the
    number of votes added."""
    added = 0
    last = 0
    while True:
        rows = session.execute(
            select(Prediction.id, Prediction.tenant_id)
            .where(Prediction.task_id == task_id, Prediction.id > last)
            .order_by(Prediction.id)
            .limit(5000)
        ).all()
        if not rows:
            return added
        by_tenant: dict[int, list[int]] = defaultdict(list)
        for pid, tid in rows:
            by_tenant[tid].append(pid)
        for tid, ids in by_tenant.items():
            added += apply_rules(session, tid, ids)
        last = rows[-1][0]


def tasks_with_rules(session: Session) -> list[int]:
    """Ids of the tasks that have rules, or rule votes to remove."""
    with_rules = set(session.scalars(select(LabelingRule.task_id).distinct()))
    with_votes = set(
        session.scalars(
            select(Prediction.task_id)
            .join(Feedback, feedback_joins_prediction())
            .where(Feedback.source == RULE_SOURCE)
            .distinct()
        )
    )
    return sorted(with_rules | with_votes)


@dataclass(frozen=True)
class RuleStats:
    """How a rule does on the scope's logged predictions: ``coverage`` the share it votes on; ``accuracy`` its
    agreement with the human-given effective labels of the predictions it votes on (None when none overlap);
    ``conflicts`` its votes that disagree with another rule's vote on the same prediction."""

    votes: int
    coverage: float
    accuracy: float | None
    conflicts: int
    checked: int  # how many of its votes had a human label to check against


def rule_stats(session: Session, task_id: int, tenant_id: int | None) -> dict[str, RuleStats]:
    """Rule name -> its figures over the task's predictions (one tenant's, or every tenant's when None)."""
    scope = [Prediction.task_id == task_id] + ([Prediction.tenant_id == tenant_id] if tenant_id is not None else [])
    total = session.scalar(select(func.count()).select_from(Prediction).where(*scope)) or 0
    votes: dict[int, dict[str, str | None]] = defaultdict(dict)
    for pid, name, label in session.execute(
        select(Feedback.prediction_id, Feedback.source_id, Feedback.label)
        .join(Prediction, feedback_joins_prediction())
        .where(*scope, Feedback.source == RULE_SOURCE)
    ):
        votes[pid][str(name)] = label
    human = exists().where(feedback_joins_prediction(), Feedback.source != RULE_SOURCE)
    truth = {
        pid: label
        for pid, label in session.execute(
            select(Prediction.id, Prediction.effective_label).where(
                *scope, Prediction.effective_label.is_not(None), Prediction.label_discarded.is_(False), human
            )
        )
    }
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # votes, checked, right, conflicts
    for pid, by_rule in votes.items():
        for name, label in by_rule.items():
            c = counts[name]
            c[0] += 1
            if pid in truth:
                c[1] += 1
                c[2] += truth[pid] == label
            c[3] += any(other != label for n, other in by_rule.items() if n != name)
    return {
        name: RuleStats(
            votes=n,
            coverage=n / total if total else 0.0,
            accuracy=right / checked if checked else None,
            conflicts=conflicts,
            checked=checked,
        )
        for name, (n, checked, right, conflicts) in counts.items()
    }
