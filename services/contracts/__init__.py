"""The contracts service: its process runs (``python -m services.contracts``), its features do not exist yet
(see the issue tracker)."""
