"""Web: the Flask application (the only module tree that imports Flask)."""
