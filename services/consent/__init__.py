"""The consent service: its process runs (``python -m services.consent``), its features do not exist yet
(see the issue tracker)."""
