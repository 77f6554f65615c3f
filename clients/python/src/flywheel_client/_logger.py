"""The background logger: log predictions and feedback from a request path without ever waiting on the network.

One daemon thread per logger takes items from a bounded buffer and sends them in batches. The guarantees:

- ``log_prediction`` / ``log_feedback`` never block on I/O and never raise: an item that does not fit in the buffer
  is counted in ``dropped``; one that cannot be encoded as JSON is counted in ``rejected``.
- Feedback is never sent before a prediction logged earlier (its prediction may be in the same buffer): a feedback
  batch only holds items older than every prediction still waiting. Predictions may overtake feedback; they
  depend on nothing.
- Connection errors, 408, 429 and 5xx are retried with exponential backoff and full jitter, waiting at least
  ``Retry-After``. This is safe because every item has an ``id``: a replay is counted by the server as a duplicate.
- Any other 4xx is never retried. When a 422 (or 409) names the bad items, those are counted in ``rejected`` and
  logged, and the rest of the batch is sent again without them; a 413 splits the batch in two.
"""

from __future__ import annotations

import atexit
import json
import logging
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import httpx

from flywheel_client._encoding import MAX_BATCH_BYTES, MAX_BATCH_ITEMS, batch_body, encode_item
from flywheel_client._errors import FlywheelConnectionError, FlywheelError

if TYPE_CHECKING:
    from flywheel_client._client import Client

__all__ = ["BackgroundLogger", "LoggerSettings"]

log = logging.getLogger("flywheel_client")

Kind = Literal["predictions", "feedback"]
# A buffered item: (sequence number, when it was buffered (monotonic), its JSON, its id).
Entry = tuple[int, float, bytes, str]
RejectHandler = Callable[[str, list[dict[str, Any]], FlywheelError], None]

_NONE = sys.maxsize
_QUOTED_ID = re.compile(r"'([A-Za-z0-9._:-]{1,128})'")
_DROP_WARNING_EVERY_S = 10.0


class LoggerSettings(TypedDict, total=False):
    """The keyword settings of :class:`BackgroundLogger` (and of ``Client.logger``)."""

    max_batch_items: int
    max_batch_bytes: int
    flush_interval: float
    max_buffer: int
    backoff_base: float
    backoff_max: float
    max_attempts: int | None
    close_timeout: float
    on_rejected: RejectHandler | None
    register_atexit: bool
    sleep: Callable[[float], object] | None
    rng: random.Random | None


class BackgroundLogger:
    """Batches predictions and feedback in a daemon thread (see the module's documentation).

    Settings:

    - ``max_batch_items`` (1,000) and ``max_batch_bytes`` (4 MiB): the most one request carries; a batch is sent
      as soon as this much is waiting,
    - ``flush_interval`` (1.0 s): … or once its oldest item has waited this long,
    - ``max_buffer`` (100,000): items held at most, waiting or in flight; past it new items are dropped (counted in
      ``dropped``, a warning logged at most every 10 s),
    - ``backoff_base`` (0.5 s), ``backoff_max`` (10 s): retry *n* (from 0) waits a uniformly random time in
      ``[0, min(backoff_max, backoff_base * 2**n)]``, and at least ``Retry-After`` when the server sent one,
    - ``max_attempts`` (``None``: retry until delivered or closed): tries per request before its items are given
      up (counted in ``dropped``),
    - ``close_timeout`` (10 s): how long :meth:`close` (and the ``atexit`` hook, and ``Client.close``) waits by
      default,
    - ``on_rejected``: called in the logger's thread as ``on_rejected(kind, items, error)`` with the items the
      server refused (kind ``"predictions"`` or ``"feedback"``); an exception it raises is logged,
    - ``register_atexit`` (True): close (so flush) at interpreter exit,
    - ``sleep``, ``rng``: the backoff's wait and randomness, for tests.

    Counters (items): ``sent`` (acknowledged by the server, duplicates included), ``duplicates`` (of those, already
    stored: replays), ``rejected`` (refused by the server, or not JSON), ``dropped`` (buffer full, logged after
    close, given up after ``max_attempts``, or still buffered when ``close`` timed out), ``retries`` (requests sent
    again), ``pending`` (buffered or in flight now). Every item logged ends up in exactly one of ``sent``,
    ``rejected``, ``dropped``, or is still ``pending``.
    """

    def __init__(
        self,
        client: Client,
        *,
        max_batch_items: int = MAX_BATCH_ITEMS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        max_attempts: int | None = None,
        close_timeout: float = 10.0,
        on_rejected: RejectHandler | None = None,
        register_atexit: bool = True,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_batch_items < 1 or max_batch_bytes < 1 or max_buffer < 1:
            raise ValueError("max_batch_items, max_batch_bytes and max_buffer must be at least 1")
        if flush_interval < 0 or backoff_base < 0 or backoff_max < 0 or close_timeout < 0:
            raise ValueError("flush_interval, backoff_base, backoff_max and close_timeout must not be negative")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None: no limit)")
        self._client = client
        self._max_items = max_batch_items
        self._max_bytes = max_batch_bytes
        self._interval = flush_interval
        self._max_buffer = max_buffer
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_attempts = max_attempts
        self._close_timeout = close_timeout
        self._on_rejected = on_rejected
        self._rng = rng if rng is not None else random.Random()
        self._abandon = threading.Event()  # set when close gives up: stop retrying, send nothing more
        self._sleep = sleep if sleep is not None else self._abandon.wait

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the thread waits here for something to send
        self._done = threading.Condition(self._lock)  # flush waits here for batches to finish
        self._preds: deque[Entry] = deque()
        self._fbs: deque[Entry] = deque()
        self._queued_bytes = 0
        self._inflight = 0  # items taken by the thread and not yet resolved
        self._inflight_min = _NONE  # the lowest sequence number among them
        self._seq = 0
        self._flush_upto = 0  # items up to this sequence number are due now (flush asked for them)
        self._closing = False
        self._closed = False
        self._close_result = False
        self._last_drop_warning = -_DROP_WARNING_EVERY_S

        self._sent = 0
        self._duplicates = 0
        self._dropped = 0
        self._rejected = 0
        self._retries = 0

        self._thread = threading.Thread(target=self._run, name="flywheel-logger", daemon=True)
        self._thread.start()
        self._atexit = register_atexit
        if register_atexit:
            atexit.register(self._at_exit)

    # --- counters -------------------------------------------------------------------------------------------------

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def duplicates(self) -> int:
        return self._duplicates

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def rejected(self) -> int:
        return self._rejected

    @property
    def retries(self) -> int:
        return self._retries

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._preds) + len(self._fbs) + self._inflight

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """The counters at one moment: ``sent``, ``duplicates``, ``rejected``, ``dropped``, ``retries``,
        ``pending``."""
        with self._lock:
            return {
                "sent": self._sent,
                "duplicates": self._duplicates,
                "rejected": self._rejected,
                "dropped": self._dropped,
                "retries": self._retries,
                "pending": len(self._preds) + len(self._fbs) + self._inflight,
            }

    def __repr__(self) -> str:
        return f"BackgroundLogger({self._client.url!r}, {self.stats()})"

    # --- the host's side ------------------------------------------------------------------------------------------

    def log_prediction(self, item: Mapping[str, Any]) -> bool:
        """Buffer one item of ``POST /v1/predictions``; returns at once: True when buffered, False when dropped
        or rejected (counted, never raised)."""
        return self._put(self._preds, "predictions", item)

    def log_feedback(self, item: Mapping[str, Any]) -> bool:
        """Buffer one item of ``POST /v1/feedback``; it is sent after every prediction logged before it."""
        return self._put(self._fbs, "feedback", item)

    def _put(self, queue: deque[Entry], kind: Kind, item: Mapping[str, Any]) -> bool:
        try:
            data = encode_item(item)
            item_id = str(item.get("id", ""))
        except (TypeError, ValueError) as exc:
            with self._lock:
                self._rejected += 1
            log.error("flywheel_client: a %s item is not JSON and was not logged: %s", kind, exc)
            return False
        now = time.monotonic()
        with self._lock:
            if self._closing or len(self._preds) + len(self._fbs) + self._inflight >= self._max_buffer:
                self._dropped += 1
                warn = now - self._last_drop_warning >= _DROP_WARNING_EVERY_S
                if warn:
                    self._last_drop_warning = now
                dropped, closing = self._dropped, self._closing
            else:
                self._seq += 1
                queue.append((self._seq, now, data, item_id))
                self._queued_bytes += len(data) + 1
                queued = len(self._preds) + len(self._fbs)
                if queued == 1 or queued == self._max_items or self._queued_bytes >= self._max_bytes:
                    self._work.notify()
                return True
        if warn:
            why = "the logger is closed" if closing else f"the buffer is full ({self._max_buffer} items)"
            log.warning("flywheel_client: dropping %s: %s; %d dropped so far", kind, why, dropped)
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything buffered now, and wait until it is resolved (stored, or refused by the server and
        counted in ``rejected``). True when it was within ``timeout`` seconds (``None``: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if threading.current_thread() is self._thread:
            return False  # from on_rejected: the thread cannot wait for itself
        with self._lock:
            target = self._seq
            self._flush_upto = max(self._flush_upto, target)
            self._work.notify()
            while self._oldest_unresolved() <= target:
                if not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._done.wait(remaining if remaining is not None else 1.0)
            return True

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking items, flush for up to ``timeout`` seconds (default ``close_timeout``), then stop the thread.
        What could not be delivered by then is counted in ``dropped``. True when everything was delivered.
        Idempotent; unregisters the ``atexit`` hook."""
        with self._lock:
            if self._closed:
                return self._close_result
            self._closing = True
            self._work.notify()
        delivered = self.flush(self._close_timeout if timeout is None else timeout)
        with self._lock:
            if not delivered:
                self._abandon.set()
                self._work.notify()
                left = len(self._preds) + len(self._fbs)
                self._dropped += left
                self._preds.clear()
                self._fbs.clear()
                self._queued_bytes = 0
                if left or self._inflight:
                    log.warning(
                        "flywheel_client: closed with %d item(s) undelivered (%d in flight)", left, self._inflight
                    )
            self._closed = True
            self._close_result = delivered
        self._thread.join(timeout=1.0)
        if self._atexit:
            self._atexit = False
            atexit.unregister(self._at_exit)
        return delivered

    def _at_exit(self) -> None:
        self._atexit = False  # no unregistering while atexit runs its handlers
        self.close()

    def __enter__(self) -> BackgroundLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the thread's side ----------------------------------------------------------------------------------------

    def _oldest_unresolved(self) -> int:
        """The lowest sequence number still buffered or in flight (lock held)."""
        return min(
            self._preds[0][0] if self._preds else _NONE,
            self._fbs[0][0] if self._fbs else _NONE,
            self._inflight_min,
        )

    def _oldest_queued(self) -> int:
        return min(self._preds[0][0] if self._preds else _NONE, self._fbs[0][0] if self._fbs else _NONE)

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    taken = self._next_batch()
                if taken is None:
                    return
                kind, entries = taken
                resolved = [0]
                try:
                    self._deliver(kind, entries, resolved)
                except Exception:
                    log.exception("flywheel_client: the logger failed to send %d %s item(s)", len(entries), kind)
                    with self._lock:
                        self._dropped += len(entries) - resolved[0]
                finally:
                    with self._lock:
                        self._inflight = 0
                        self._inflight_min = _NONE
                        self._done.notify_all()
        finally:
            with self._lock:
                self._done.notify_all()

    def _next_batch(self) -> tuple[Kind, list[Entry]] | None:
        """Wait until a batch is due and take it (lock held); None when the thread should stop."""
        while True:
            if self._abandon.is_set():
                return None
            queued = len(self._preds) + len(self._fbs)
            if queued == 0:
                if self._closing:
                    return None
                self._work.wait()
                continue
            if queued >= self._max_items or self._queued_bytes >= self._max_bytes or self._closing:
                break
            if self._oldest_queued() <= self._flush_upto:
                break
            oldest = min(
                self._preds[0][1] if self._preds else float("inf"), self._fbs[0][1] if self._fbs else float("inf")
            )
            remaining = oldest + self._interval - time.monotonic()
            if remaining <= 0:
                break
            self._work.wait(remaining)
        preds, fbs = self._preds, self._fbs
        queue: deque[Entry]
        if fbs and (not preds or fbs[0][0] < preds[0][0]):
            # Feedback older than every waiting prediction: its predictions were all sent (or refused) before.
            kind: Kind = "feedback"
            queue, limit = fbs, preds[0][0] if preds else _NONE
        else:
            kind, queue, limit = "predictions", preds, _NONE
        entries: list[Entry] = []
        size = 0
        while queue and queue[0][0] < limit and len(entries) < self._max_items:
            n = len(queue[0][2]) + 1
            if entries and size + n > self._max_bytes:
                break
            entries.append(queue.popleft())
            size += n
        self._queued_bytes -= size
        self._inflight = len(entries)
        self._inflight_min = min(e[0] for e in entries)
        return kind, entries

    def _deliver(self, kind: Kind, entries: list[Entry], resolved: list[int]) -> None:
        """Send one batch until every item in it is resolved: sent, rejected or given up."""
        work: deque[list[Entry]] = deque([entries])
        while work:
            chunk = work.popleft()
            response = self._post(kind, chunk)
            if response is None:  # abandoned by close, or out of attempts
                lost = len(chunk) + sum(len(c) for c in work)
                with self._lock:
                    self._dropped += lost
                resolved[0] += lost
                return
            if response.is_success:
                try:
                    duplicates = int(json.loads(response.content).get("duplicates", 0))
                except (ValueError, TypeError, AttributeError):
                    duplicates = 0
                with self._lock:
                    self._sent += len(chunk)
                    self._duplicates += duplicates
                resolved[0] += len(chunk)
                continue
            error = FlywheelError.from_response(response)
            if response.status_code == 413 and len(chunk) > 1:
                half = len(chunk) // 2
                work.appendleft(chunk[half:])
                work.appendleft(chunk[:half])
                continue
            bad = _bad_positions(kind, chunk, error) if response.status_code in (409, 422) else set()
            if bad and len(bad) < len(chunk):
                self._reject(kind, [e for i, e in enumerate(chunk) if i in bad], error)
                work.appendleft([e for i, e in enumerate(chunk) if i not in bad])
            else:
                self._reject(kind, chunk, error)
            resolved[0] += len(bad) if bad and len(bad) < len(chunk) else len(chunk)

    def _post(self, kind: Kind, chunk: list[Entry]) -> httpx.Response | None:
        """POST one batch, retrying what may succeed later; the final answer, or None when given up."""
        body = batch_body(kind, [e[2] for e in chunk])
        path = "/v1/predictions" if kind == "predictions" else "/v1/feedback"
        attempt = 0
        while True:
            if self._abandon.is_set():
                return None
            error: FlywheelError
            try:
                response = self._client._send("POST", path, content=body)
            except FlywheelConnectionError as exc:
                error = exc
            else:
                error = FlywheelError.from_response(response)
                if response.is_success or not error.retryable:
                    return response
            attempt += 1
            if self._max_attempts is not None and attempt >= self._max_attempts:
                log.error(
                    "flywheel_client: giving up on %d %s item(s) after %d attempts: %s",
                    len(chunk),
                    kind,
                    attempt,
                    error,
                )
                return None
            delay = self.backoff(attempt - 1, error.retry_after)
            with self._lock:
                self._retries += 1
            (log.warning if attempt == 1 else log.debug)(
                "flywheel_client: sending %d %s item(s) failed (%s); retry %d in %.2fs",
                len(chunk),
                kind,
                error,
                attempt,
                delay,
            )
            self._sleep(delay)

    def backoff(self, retry: int, retry_after: float | None = None) -> float:
        """The wait before retry number ``retry`` (from 0): full jitter, at least ``retry_after``."""
        cap = min(self._backoff_max, self._backoff_base * 2.0 ** min(retry, 64))
        delay = self._rng.uniform(0.0, cap)
        return delay if retry_after is None else max(delay, retry_after)

    def _reject(self, kind: Kind, entries: list[Entry], error: FlywheelError) -> None:
        with self._lock:
            self._rejected += len(entries)
        ids = [e[3] for e in entries]
        shown = ", ".join(ids[:10]) + (", …" if len(ids) > 10 else "")
        problems = "; ".join(f"{e.get('loc')}: {e.get('msg')}" for e in error.errors[:5])
        log.warning(
            "flywheel_client: the server refused %d %s item(s) (%s)%s; ids: %s",
            len(entries),
            kind,
            error,
            f" [{problems}]" if problems else "",
            shown,
        )
        if self._on_rejected is not None:
            try:
                self._on_rejected(kind, [json.loads(e[2]) for e in entries], error)
            except Exception:
                log.exception("flywheel_client: on_rejected raised")


def _bad_positions(kind: Kind, chunk: list[Entry], error: FlywheelError) -> set[int]:
    """The positions in ``chunk`` of the items that ``error`` names: by index (``loc: [kind, i, …]``, 422) or by a
    quoted id in the message (409: the id exists with other content)."""
    bad: set[int] = set()
    positions: dict[str, int] | None = None
    for item in error.errors:
        loc = item.get("loc")
        if isinstance(loc, list) and len(loc) >= 2 and loc[0] == kind and isinstance(loc[1], int):
            if 0 <= loc[1] < len(chunk):
                bad.add(loc[1])
            continue
        if error.status == 409:
            if positions is None:
                positions = {e[3]: i for i, e in enumerate(chunk)}
            for found in _QUOTED_ID.findall(str(item.get("msg", ""))):
                if found in positions:
                    bad.add(positions[found])
    return bad
