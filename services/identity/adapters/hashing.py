"""argon2id password hashing, off the event loop, at OWASP's recommended cost or higher."""

from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP's Password Storage Cheat Sheet lists five argon2id configurations as equal in the defence they
# give, trading memory for passes: (memory in KiB, passes), one lane each.
OWASP_CONFIGURATIONS = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))
# The default: the second of them.
OWASP_MEMORY_KIB = 19456
OWASP_TIME_COST = 2
OWASP_PARALLELISM = 1


def meets_owasp(memory_kib: int, time_cost: int, parallelism: int) -> bool:
    """At or above one of OWASP's configurations in both memory and passes."""
    return parallelism >= 1 and any(memory_kib >= m and time_cost >= t for m, t in OWASP_CONFIGURATIONS)


BELOW_OWASP = "argon2id parameters below every OWASP configuration (memory KiB/passes: {}; one lane or more)".format(
    ", ".join(f"{m}/{t}" for m, t in OWASP_CONFIGURATIONS)
)


class PasswordHasher:
    """argon2id; every verification of an unknown account runs against a dummy hash of the same cost."""

    def __init__(
        self,
        memory_kib: int = OWASP_MEMORY_KIB,
        time_cost: int = OWASP_TIME_COST,
        parallelism: int = OWASP_PARALLELISM,
        workers: int | None = None,
    ) -> None:
        if not meets_owasp(memory_kib, time_cost, parallelism):
            raise ValueError(BELOW_OWASP)
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, hash_len=32, salt_len=16,
            type=argon2.Type.ID,
        )
        # argon2-cffi releases the GIL: one worker per core runs hashes truly in parallel, and a
        # bounded pool keeps memory use bounded (each hash holds memory_kib) under a login storm.
        self._pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2, thread_name_prefix="argon2")
        self.dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))

    def hash_now(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify_now(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.hash_now, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Always costs one full verification, also when there is no stored hash (dummy)."""
        target = stored or self.dummy_hash
        ok = await asyncio.get_running_loop().run_in_executor(self._pool, self.verify_now, target, password)
        return ok and stored is not None

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
