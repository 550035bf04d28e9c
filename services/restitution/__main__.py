"""``python -m services.restitution``: the restitution service's process, ahead of its features.

The return of the car (appointment, inspection, report, damage grid, invoice) come with the service's own issue. Until then the process already stands where they
will run: it owns its database (``leaseline_restitution``), connects to the broker and the store, and
serves ``/healthz``, ``/readyz`` and ``/metrics``, so that ``make run``, docker-compose and monitoring
treat it like the other services. It consumes and publishes nothing yet.
"""

from services.restitution.settings import RestitutionSettings
from shared.runtime.service import serve_process

if __name__ == "__main__":
    serve_process(RestitutionSettings())
