"""Identity's collections: one document per aggregate, written only through ``DocumentStore``."""

from __future__ import annotations

from dataclasses import dataclass

from shared.runtime.service import ServiceRuntime
from shared.storage import DocumentStore, IndexSpec

from services.identity.adapters.ratelimiter import RateLimiter


@dataclass
class Stores:
    accounts: DocumentStore  # customers, organisation users, staff; _id = account id
    sessions: DocumentStore  # one per refresh-token family
    devices: DocumentStore
    challenges: DocumentStore  # device authorisations in progress
    customers: DocumentStore  # what contracts told us per customer number; Belgian registration codes
    organisations: DocumentStore
    audit: DocumentStore  # one document per administrative act, never updated
    policies: DocumentStore
    keys: DocumentStore
    registration_attempts: DocumentStore  # registrations of an email that already has an account, never updated
    untexted_codes: DocumentStore  # Belgian registration attempts of numbers texted no code (see registration)
    limiter: RateLimiter

    @classmethod
    def attach(cls, runtime: ServiceRuntime) -> "Stores":
        stores = cls(
            accounts=runtime.store("accounts"),
            sessions=runtime.store("sessions"),
            devices=runtime.store("devices"),
            challenges=runtime.store("device_challenges"),
            customers=runtime.store("customer_numbers"),
            organisations=runtime.store("organisations"),
            audit=runtime.store("audit"),
            policies=runtime.store("policies"),
            keys=runtime.store("signing_keys"),
            registration_attempts=runtime.store("registration_attempts"),
            untexted_codes=runtime.store("untexted_registration_codes"),
            limiter=RateLimiter(runtime.db["rate_limits"]),
        )
        runtime.indexes(INDEXES)
        return stores


INDEXES = [
    IndexSpec("accounts", (("email", 1),), unique=True, name="email_unique"),
    IndexSpec("accounts", (("customer_number", 1),)),
    IndexSpec("accounts", (("organisation_id", 1),)),
    IndexSpec("sessions", (("account_id", 1),)),
    IndexSpec("devices", (("account_id", 1),)),
    IndexSpec("customer_numbers", (("access_ends_at", 1),)),
    IndexSpec("registration_attempts", (("account_id", 1),)),
    IndexSpec("audit", (("target_id", 1), ("at", 1))),
    IndexSpec("audit", (("organisation_id", 1), ("at", 1))),
]
