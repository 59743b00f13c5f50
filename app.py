"""The entry point gunicorn and the Procfile name: ``gunicorn "app:create_app()"``.

The application factory lives in ``captioner.web.app``; this file only re-exports it, so
importing it builds nothing (no module-level ``app``: see there). ``python app.py`` runs
Flask's development server on http://127.0.0.1:5000.
"""

from captioner.web.app import create_app, default_loader, main

__all__ = ["create_app", "default_loader", "main"]

if __name__ == "__main__":
    main()
