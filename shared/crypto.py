"""Field-level encryption for secrets that must cross Kafka (activation tokens, codes).

A sealed value reads ``sealed:v1:<key id>:<base64url(nonce || ciphertext)>``. The key id lets keys
rotate: the first key of the ring seals, every key of the ring unseals. The associated data binds a
ciphertext to the field it was sealed for, so it cannot be copied into another field or event.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "sealed:v1:"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SealError(ValueError):
    """A sealed value could not be opened: unknown key, tampered, or not a sealed value at all."""


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Keyring:
    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(f"current key {current!r} is not in the ring")
        for key_id, key in keys.items():
            if not _KEY_ID.match(key_id):
                raise ValueError(f"key id {key_id!r} must be 1-64 letters, digits, '_', '.' or '-'")
            if len(key) != 32:
                raise ValueError(f"key {key_id!r} must be 32 bytes (AES-256), got {len(key)}")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._current = current

    @classmethod
    def parse(cls, spec: str) -> "Keyring":
        """Read ``kid:base64key[,kid:base64key...]``; the first key is the one that seals."""
        entries = [item.strip() for item in spec.split(",") if item.strip()]
        if not entries:
            raise ValueError("EVENT_SECRET_KEYS is empty: set it to 'kid:base64key' (32-byte key)")
        keys: dict[str, bytes] = {}
        for entry in entries:
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                raise ValueError("each EVENT_SECRET_KEYS entry must read 'kid:base64key'")
            try:
                keys[key_id] = _b64decode(encoded)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"key {key_id!r} is not valid base64") from exc
        return cls(keys, current=entries[0].partition(":")[0])

    @staticmethod
    def generate_spec(key_id: str = "k1") -> str:
        return f"{key_id}:{base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip('=')}"

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(12)
        ciphertext = self._keys[self._current].encrypt(nonce, plaintext.encode(), context.encode())
        body = base64.urlsafe_b64encode(nonce + ciphertext).decode().rstrip("=")
        return f"{_PREFIX}{self._current}:{body}"

    def unseal(self, sealed: str, *, context: str) -> str:
        if not sealed.startswith(_PREFIX):
            raise SealError("not a sealed value")
        key_id, sep, body = sealed[len(_PREFIX):].partition(":")
        if not sep:
            raise SealError("sealed value has no key id")
        aead = self._keys.get(key_id)
        if aead is None:
            raise SealError(f"sealed with unknown key {key_id!r}")
        try:
            raw = _b64decode(body)
            return aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise SealError("sealed value was tampered with or sealed for another field") from exc


def is_sealed(value: str) -> bool:
    return value.startswith(_PREFIX)
