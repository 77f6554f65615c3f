"""The client's data-rights calls against the real app and database (httpx's WSGI transport: real requests through
Flask, no server process): erasure by id in chunks and by user, export streamed as JSON Lines and as Parquet."""

from __future__ import annotations

import io

import httpx
import pyarrow.parquet as pq
import pytest
from flask import Flask

from flywheel_client import Client

from support import World, prediction


def _client(app: Flask, key: str) -> Client:
    return Client("http://flywheel.test", key, transport=httpx.WSGITransport(app=app))


def test_export_streams_every_row_and_erasure_follows_the_client_s_ids(app: Flask, world: World) -> None:
    acme, globex = _client(app, world.acme_rw), _client(app, world.globex_rw)
    items = [prediction(f"p-{i}", metadata={"user_id": f"u-{i % 10}"}) for i in range(2500)]
    assert acme.log_predictions(items).accepted == 2500
    acme.log_feedback([{"id": "f-1", "prediction_id": "p-1", "label": "exchange_rate", "source": "end_user"}])

    exported = list(acme.iter_export("intent"))
    assert len(exported) == 2500 and len({row["id"] for row in exported}) == 2500
    assert next(row for row in exported if row["id"] == "p-1")["effective_label"] == "exchange_rate"
    assert list(globex.iter_export("intent")) == []  # a tenant key reads only its own
    buffer = io.BytesIO()
    assert acme.download_export("intent", buffer) == len(buffer.getvalue()) > 0
    assert pq.read_table(io.BytesIO(buffer.getvalue())).num_rows == 2500

    ids = [f"p-{i}" for i in range(1500)]  # two requests: 1,000 and 500
    assert globex.erase(ids)["predictions"] == 0  # another tenant's ids are unknown to it
    counts = acme.erase(ids)
    assert counts["predictions"] == 1500 and counts["feedback"] == 1
    assert acme.erase(ids)["predictions"] == 0  # again: zeros, not an error
    by_user = acme.erase(user_id="u-7")
    assert by_user["predictions"] == 100  # p-1507, p-1517, … p-2497: the ones still there
    assert acme.erase_prediction("p-2000")["predictions"] == 1
    assert acme.erase_prediction("p-2000")["predictions"] == 0
    assert len(list(acme.iter_export("intent"))) == 2500 - 1500 - 100 - 1


def test_erase_takes_ids_or_a_user_not_both(app: Flask, world: World) -> None:
    acme = _client(app, world.acme_rw)
    with pytest.raises(ValueError, match="not both"):
        acme.erase(["p-1"], user_id="u-1")
    with pytest.raises(ValueError, match="not both"):
        acme.erase()
