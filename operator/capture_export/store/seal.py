"""The seal on rows capture-export appended itself: what lets the export trust a row without checking it.

Our own append (``CaptureStore.append``: ``seed``, the ingest server, tests) encodes every record with
``records.encode_body``: one canonical CBOR map, credentials stripped. Such a row needs no check at
export, which is what keeps the default export fast. A flag saying so would not do: any writer can set a
flag (schema version 3's ``stripped`` column was exactly that). So the append stores beside each body a
**seal**, a keyed MAC of the body (HMAC-SHA-256, truncated to 16 bytes) under a random per-store key kept
in the store's ``capture_export_meta`` table (``seal_key``), and the export trusts a row only when its
seal matches its bytes. Any other row, whatever columns it sets, is *foreign* and gets the full check
(store/check.py).

The trust model:

* **PostgreSQL**: grant the gateway's role ``INSERT`` (and, if it needs them, ``SELECT``) on ``captures``
  only, not ``SELECT`` on ``capture_export_meta``: it then cannot learn the key, so it cannot forge a seal
  (copying another row's seal does not help: the seal covers the body). The operator's role owns both.
* **SQLite**: whoever can open the file can read the key and forge seals. A gateway that writes the file
  directly is trusted as far as the file is; its rows are checked only when unsealed.
* The MAC also covers ``SEAL_CONTEXT``, which names the credential rules the append applied: when those
  rules widen in a later version, the context changes and rows sealed under the old rules are checked
  again like foreign rows.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["SEAL_CONTEXT", "SEAL_KEY_META", "SEAL_SIZE", "NativeSealCheck", "RecordSeal", "new_seal_key"]

SEAL_SIZE = 16
# Rules 3: OpenTelemetry captured-header attributes, and credentials inside JSON text and header-line text.
SEAL_CONTEXT = b"capture-export seal v1 / credential rules 3"
SEAL_KEY_META = "seal_key"  # the key in capture_export_meta, as hex

# _cbor_json.seals_valid: (rows, the 64-byte HMAC key) -> all valid, or None where it leaves the rows to Python.
NativeSealCheck = Callable[[list[Any], bytes], bool | None]


def new_seal_key() -> str:
    """A fresh per-store key, as stored in ``capture_export_meta`` (hex)."""
    return secrets.token_hex(32)


class RecordSeal:
    """Seals bodies and checks seals under one store's key."""

    def __init__(self, key_hex: str) -> None:
        key = bytes.fromhex(key_hex)
        if len(key) < 16:
            raise ValueError("seal key too short")
        # Bind the key to the credential rules once, so that each seal is one plain HMAC over the body.
        mac_key = hashlib.sha256(key + SEAL_CONTEXT).digest().ljust(64, b"\0")
        # HMAC (RFC 2104) with its two keyed states computed once: checking a seal then costs one SHA-256
        # pass over the body and a block, a third less than hmac.digest, which sets up OpenSSL's HMAC on
        # every call. This is the default export's hot path.
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in mac_key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in mac_key))
        self._mac_key = mac_key
        self._key_hex = key_hex

    def __reduce__(self) -> tuple[type[RecordSeal], tuple[str]]:
        # Pickled as its key, for the trip to an encode worker of this process (export/batch.py).
        return RecordSeal, (self._key_hex,)

    def __repr__(self) -> str:
        return "RecordSeal(<key not shown>)"

    def seal(self, body: bytes | memoryview) -> bytes:
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:SEAL_SIZE]

    def valid(self, body: object, seal: object) -> bool:
        """Whether ``seal`` is this store's seal of ``body`` (False for anything that is not bytes)."""
        if type(seal) is not bytes or not isinstance(body, bytes | memoryview):
            return False
        return hmac.compare_digest(self.seal(body), seal)

    def all_valid_natively(self, rows: Iterable[tuple[Any, Any, Any, Any]], native: NativeSealCheck) -> bool | None:
        """``all_valid`` in one call of ``native``, export/_cbor_json.c's ``seals_valid`` (about half the CPU of
        the loop), or None where it leaves the rows to Python: not a list, a row it does not check (not a
        4-tuple, a memoryview it cannot read), no SHA-256 found."""
        return native(rows, self._mac_key) if isinstance(rows, list) else None

    def all_valid(self, rows: Iterable[tuple[Any, Any, Any, Any]], native: NativeSealCheck | None = None) -> bool:
        """Whether every ``(id, ts_us, body, seal)`` row (a StoredRecord) holds this store's seal of its body:
        ``valid`` of each, in one loop without a call per row (the default export checks whole batches of
        its own rows so: export/batch.py). False at the first row that does not. With ``native`` (the
        optional extension's ``seals_valid``, passed by export/batch.py where it is built), the rows are
        checked in one call where it can (``all_valid_natively``), else here."""
        verdict = self.all_valid_natively(rows, native) if native is not None else None
        if verdict is not None:
            return verdict
        inner_state, outer_state, same = self._inner, self._outer, hmac.compare_digest
        for _, _, body, mark in rows:
            if type(mark) is not bytes or (type(body) is not bytes and not isinstance(body, memoryview)):
                return False
            inner = inner_state.copy()
            inner.update(body)
            outer = outer_state.copy()
            outer.update(inner.digest())
            if not same(outer.digest()[:SEAL_SIZE], mark):
                return False
        return True
