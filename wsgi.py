"""The one module-level app, for gunicorn: ``gunicorn wsgi:app``."""

from flywheel.app import create_server_app

app = create_server_app()
