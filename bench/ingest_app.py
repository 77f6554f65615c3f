"""The Flywheel app plus a no-op POST route, so the benchmark's baseline runs on the same gunicorn configuration."""

from __future__ import annotations

from flask import Flask, Response

from flywheel.app import create_server_app


def create_bench_app() -> Flask:
    app = create_server_app()  # as `flywheel serve` builds it

    @app.post("/_bench/noop")
    def noop() -> Response:
        return Response(status=204)

    return app
