"""Brute-force protection: consecutive failed logins lock the account, for longer each time.

5 failures in a row lock it for 15 minutes; each new lock lasts twice the previous one; after
``timed_locks`` timed locks the next one is permanent, and only an administrator lifts it. A
successful login (or an administrator's unlock) forgets the failures and the lock history.
Failures while a lock holds are not counted: an attacker cannot escalate a lock by hammering it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class LockoutPolicy:
    enabled: bool = True
    threshold: int = 5
    first_lock: timedelta = timedelta(minutes=15)
    timed_locks: int = 4  # 15 min, 30 min, 1 h, 2 h, then permanent

    def duration_of_lock(self, number: int) -> timedelta | None:
        """How long the ``number``-th lock (1-based) lasts; None: until an administrator lifts it."""
        if number > self.timed_locks:
            return None
        return self.first_lock * 2 ** (number - 1)


@dataclass(frozen=True)
class LockState:
    failures: int = 0
    locks: int = 0  # locks placed since the last success or administrator unlock
    locked: bool = False
    until: datetime | None = None  # None while locked: permanent

    @classmethod
    def from_state(cls, state: dict) -> "LockState":
        lock = state.get("lock") or {}
        return cls(
            failures=state.get("failed_logins", 0),
            locks=state.get("locks_so_far", 0),
            locked=bool(lock),
            until=lock.get("until"),
        )

    def to_state(self) -> dict:
        return {
            "failed_logins": self.failures,
            "locks_so_far": self.locks,
            "lock": {"until": self.until, "permanent": self.until is None} if self.locked else None,
        }

    def holds(self, now: datetime) -> bool:
        return self.locked and (self.until is None or now < self.until)

    def expired(self, now: datetime) -> bool:
        return self.locked and self.until is not None and now >= self.until


@dataclass(frozen=True)
class FailureOutcome:
    state: LockState
    unlocked_by_expiry: bool = False
    newly_locked: bool = False


def after_failure(state: LockState, now: datetime, policy: LockoutPolicy) -> FailureOutcome:
    if state.holds(now):
        return FailureOutcome(state)
    unlocked = state.expired(now)
    if unlocked:
        state = LockState(failures=0, locks=state.locks)
    failures = state.failures + 1
    if not policy.enabled or failures < policy.threshold:
        return FailureOutcome(LockState(failures=failures, locks=state.locks), unlocked_by_expiry=unlocked)
    number = state.locks + 1
    duration = policy.duration_of_lock(number)
    until = None if duration is None else now + duration
    return FailureOutcome(LockState(0, number, True, until), unlocked_by_expiry=unlocked, newly_locked=True)


def after_success(state: LockState) -> LockState:
    return LockState()
