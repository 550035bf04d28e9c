"""The restitution service: its process runs (``python -m services.restitution``), its features do not exist yet
(see the issue tracker)."""
