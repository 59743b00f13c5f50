"""Training code (embed → train → evaluate), kept apart from the library the service uses.

Nothing under ``captioner/`` outside this sub-package imports it.
"""
