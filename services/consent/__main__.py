"""``python -m services.consent``: the consent service's process, ahead of its features.

Terms versions and their acceptance, consent statements and privacy requests come with the service's own issue. Until then the process already stands where they
will run: it owns its database (``leaseline_consent``), connects to the broker and the store, and
serves ``/healthz``, ``/readyz`` and ``/metrics``, so that ``make run``, docker-compose and monitoring
treat it like the other services. It consumes and publishes nothing yet.
"""

from services.consent.settings import ConsentSettings
from shared.runtime.service import serve_process

if __name__ == "__main__":
    serve_process(ConsentSettings())
