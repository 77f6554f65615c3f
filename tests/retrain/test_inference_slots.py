"""The inference bound: shared by the processes forked after it was made, and a full bound is a 503, not a hang."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from flywheel.core.errors import ServiceUnavailable
from flywheel.retrain.serving import InferenceSlots


def _try_slot(slots: InferenceSlots, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        with slots.hold():
            out.put("got a slot")
    except ServiceUnavailable as exc:
        out.put(f"503: {exc.detail}")


def test_a_full_bound_answers_503_in_this_process_and_in_a_forked_one() -> None:
    slots = InferenceSlots(1, 1, wait_s=0.2)
    with slots.hold():
        with pytest.raises(ServiceUnavailable, match="busy"), slots.hold():
            pass
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_try_slot, args=(slots, out))
        child.start()
        child.join(30)
        assert out.get(timeout=5).startswith("503")  # the worker forked after it shares the one bound
    child = multiprocessing.get_context("fork").Process(target=_try_slot, args=(slots, out))
    child.start()
    child.join(30)
    assert out.get(timeout=5) == "got a slot"  # released: the next one gets it


def test_two_slots_let_two_run_at_once_and_no_third() -> None:
    slots = InferenceSlots(2, 1, wait_s=0.2)
    inside, release = threading.Barrier(3), threading.Event()

    def hold() -> None:
        with slots.hold():
            inside.wait()
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait(10)  # both are inside at the same time
    with pytest.raises(ServiceUnavailable), slots.hold():
        pass
    release.set()
    for t in threads:
        t.join()


def test_the_machine_default_leaves_a_core_for_other_requests() -> None:
    slots = InferenceSlots.for_machine()
    cores = multiprocessing.cpu_count()
    assert slots.slots == max(1, cores - 1)
    assert slots.slots * slots.threads <= max(1, cores - 1)
