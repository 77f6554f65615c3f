"""The one module-level app, for gunicorn: ``gunicorn wsgi:app``."""

from flywheel.app import create_app

app = create_app()
