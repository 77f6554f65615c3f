"""Fixtures of the retraining tests (defined in ``support.retrain``, shared with the data-rights lineage tests): a tiny
local BERT base built once per session, one torch thread, few-shot settings."""

from support.retrain import one_torch_thread, rs, tiny_base

__all__ = ["one_torch_thread", "rs", "tiny_base"]
