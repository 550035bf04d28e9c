"""``python -m services.contracts``: the contracts service's process, ahead of its features.

Contract linking, the contract events identity and notifications wait for, and closure come with the service's own issue. Until then the process already stands where they
will run: it owns its database (``leaseline_contracts``), connects to the broker and the store, and
serves ``/healthz``, ``/readyz`` and ``/metrics``, so that ``make run``, docker-compose and monitoring
treat it like the other services. It consumes and publishes nothing yet.
"""

from services.contracts.settings import ContractsSettings
from shared.runtime.service import serve_process

if __name__ == "__main__":
    serve_process(ContractsSettings())
