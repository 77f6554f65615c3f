"""The transformer classifiers that fine-tuning trains and serving loads: transformers' own sequence classifier
(CLS pooling) and a mean-pooling BERT, with the rule that picks the class to load a saved model with.

Both the training loop (``finetune``) and the loaders (``classifiers``) need these, so they live apart from either.
torch and transformers are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_MEAN_POOLING_CLASS: Any = None
MEAN_POOLING_ARCHITECTURE = "MeanPoolingBertForSequenceClassification"


def mean_pooling_class() -> Any:
    """``MeanPoolingBertForSequenceClassification``: BERT + a linear classifier on the unit-norm mean-pooled
    last hidden state. A ``PreTrainedModel``: ``save_pretrained`` / ``from_pretrained`` as usual, and its config
    names this architecture, which ``load_classifier`` dispatches on. Built on first use (torch imported lazily)."""
    global _MEAN_POOLING_CLASS
    if _MEAN_POOLING_CLASS is not None:
        return _MEAN_POOLING_CLASS
    import torch
    from transformers import BertModel, BertPreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPoolingBertForSequenceClassification(BertPreTrainedModel):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.num_labels = config.num_labels
            self.bert = BertModel(config, add_pooling_layer=False)
            self.dropout = torch.nn.Dropout(config.hidden_dropout_prob)
            self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
            self.post_init()

        def forward(
            self,
            input_ids: Any = None,
            attention_mask: Any = None,
            token_type_ids: Any = None,
            labels: Any = None,
            **kwargs: Any,
        ) -> Any:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            logits = self.classifier(self.dropout(pooled))
            loss = None
            if labels is not None:
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    _MEAN_POOLING_CLASS = MeanPoolingBertForSequenceClassification
    return _MEAN_POOLING_CLASS


def model_class_for(directory: str | Path) -> Any:
    """The class to load a saved classifier with: ours for mean pooling, else AutoModelForSequenceClassification."""
    import json

    from transformers import AutoModelForSequenceClassification

    config = json.loads((Path(directory) / "config.json").read_text())
    if MEAN_POOLING_ARCHITECTURE in (config.get("architectures") or []):
        return mean_pooling_class()
    return AutoModelForSequenceClassification


def load_model_for_training(base: str | Path, labels: Sequence[str], *, pooling: str = "cls") -> tuple[Any, Any]:
    """Tokenizer and a fresh sequence classifier (fp32 weights) on top of ``base``: transformers'
    ``AutoModelForSequenceClassification`` for ``pooling="cls"``, the mean-pooling BERT for ``"mean"``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', not {pooling!r}")
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model_class = AutoModelForSequenceClassification if pooling == "cls" else mean_pooling_class()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
    try:
        model = model_class.from_pretrained(
            base,
            local_files_only=True,
            dtype=torch.float32,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return tokenizer, model
