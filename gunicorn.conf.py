"""gunicorn settings for a checkout: ``gunicorn -c gunicorn.conf.py "app:create_app()"``.

The settings and hooks live in ``captioner/web/gunicorn_conf.py``, where an installed AltCap
has them too (``gunicorn -c python:captioner.web.gunicorn_conf ...``); this file only imports
them, so both commands run one configuration. gunicorn puts the working directory on
``sys.path`` before it reads this file, so a checkout finds ``captioner`` installed or not.
"""

from captioner.web.gunicorn_conf import *  # noqa: F403
