"""Jobs: the batch-job queue, its stores (SQLite, Redis), plans and reports."""
