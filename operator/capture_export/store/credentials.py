"""What counts as a credential in a capture record, and how it is taken out (on decoded records).

A gateway captures request and response headers, and with them the caller's keys. They never leave the
store. This module decides, on a *decoded* record (dicts and lists as cbor2 gives them), what is removed:

* **Header names** are compared normalised: a text or UTF-8 byte string, surrounding whitespace and a
  trailing colon dropped, lower case, ``_`` read as ``-``, a CGI/WSGI ``http-`` prefix dropped (so
  ``HTTP_AUTHORIZATION``, ``b"Authorization"`` and ``" X-Api-Key "`` are all found; so is OpenTelemetry's
  ``http.request.header.authorization`` attribute, judged as the header it holds). A header is a
  credential when its name is in ``CREDENTIAL_HEADERS``, contains one of ``CREDENTIAL_NAME_PARTS``
  (``cf-aig-authorization``, ``x-portkey-api-key``, ``x-client-secret`` …), or is named
  in the exporter's ``spec.stripHeaders``. A name part found only inside one of ``NOT_CREDENTIAL_PARTS``
  does not count: LiteLLM's metadata names the virtual key a request used (``user_api_key_hash``,
  ``user_api_key_alias``, ``user_api_key_team_id`` …) and whether an OAuth token was used
  (``used_client_oauth_token``), never the secret itself; what else the name holds is judged as usual
  (``user_api_key_secret`` is a credential, and so is a bare ``user_api_key``).
* **Header containers**: the value of any key whose normalised name ends in ``headers`` (``headers``,
  ``Headers``, ``request_headers``, ``extra_headers`` …), in every shape gateways write: a map (values may
  be lists, as Go's ``http.Header``), a list of ``[name, value]`` pairs, a HAR-style list of
  ``{name, value}`` objects, a list of ``"Name: value"`` lines, or one raw header block (text or bytes).
  Credential entries are removed; byte-string header names are rewritten as text.
* **Anywhere else** in the record, a map key that is exactly a credential header name
  (``CREDENTIAL_HEADERS`` or ``spec.stripHeaders``, not the name parts) or ``cookies`` (HAR's cookie
  list) is removed too, with its value; and a ``{name, value}`` entry whose name is a credential header
  or query parameter keeps its name and loses its value.
* **URLs**: in every string that is a URL or a path (it starts with ``http://``, ``https://``, ``ws://``,
  ``wss://`` or ``/``, or it is the value of a key named like ``path``, ``url``, ``uri``, ``endpoint``,
  ``href``, ``location`` or ``referer``), the values of credential query parameters (``key``,
  ``api_key``, ``access_token``, ``sig`` …, see ``CREDENTIAL_QUERY_PARAMS``, and any parameter named like
  a credential header) and the password of ``user:password@`` are replaced by ``REDACTED``. URLs inside
  prose (a prompt that quotes a URL) are left alone.
* **JSON text**: a text or byte string whose first non-blank character is ``{`` or ``[`` and that parses
  as JSON (a gateway that stores its ``capture``, a request, a response or its headers as JSON text,
  JSON text inside JSON text, at any depth) is judged as the structure it holds, by all of these rules
  (as a header container when its key names one). When something was removed it is replaced by the
  stripped structure re-serialised as compact JSON (a byte string stays bytes); when nothing was, it is
  kept byte for byte.
* **Any other text or byte string** (raw HTTP messages, truncated JSON, prompts) that holds a marker
  of the pre-scan below: each line ``Name: value`` whose name is a credential header keeps its name and
  loses its value (``Authorization: REDACTED``: a raw HTTP message keeps its shape, the key is gone), and
  so does each JSON pair ``"name": "value"`` (or ``"name": ["value"``) whose name is one, also quoted
  inside JSON text (``\\"name\\": \\"value\\"``). This is not limited to keys named like ``raw``: a
  capture that is a raw HTTP message under any key is caught. The price is false positives, accepted: a
  prompt that quotes a header line or a JSON pair naming a credential (``x-api-key: …``) loses that value.
  A value ends at its first quote or backslash (credentials hold neither). A compressed raw body (gzip,
  brotli) cannot be read and is left as it is.

Walking a whole record costs; ``CredentialPolicy.might_hold`` first scans the record's canonical CBOR
bytes (lower-cased, ``_`` read as ``-``) for markers that every credential name and parameter contains,
so most records are never walked. The scan is only sound on canonical bytes (definite lengths: a name is
contiguous there). JSON text may spell a name with ``\\u00XX`` escapes: when the bytes hold ``\\u00``
and no marker, the scan reads those escapes and looks again. In a record the scan flags, each string is
scanned alone too, before it is parsed as JSON or searched for lines (and only when it holds a ``:`` or
starts like JSON), so the strings of a flagged record that hold no marker cost little.
Every LiteLLM record holds ``user_api_key_*`` metadata keys, which contain the marker ``api_key``: the scan
leaves ``NOT_CREDENTIAL_PARTS`` out before it looks, as the name rules do, so those records are not walked
either (that walk cost ten times the rest of encoding a LiteLLM record at ingest).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = [
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_NAME_PARTS",
    "CREDENTIAL_QUERY_PARAMS",
    "DEFAULT_POLICY",
    "NOT_CREDENTIAL_PARTS",
    "REDACTED",
    "CredentialPolicy",
    "normalise_header_name",
]

# Header names that carry credentials (normalised). They never leave the store.
CREDENTIAL_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
    "ocp-apim-subscription-key", "x-auth-token", "x-amz-security-token", "cookie", "set-cookie",
})  # fmt: skip
# A header whose normalised name contains one of these is a credential too.
CREDENTIAL_NAME_PARTS = (
    "authorization", "api-key", "apikey", "auth-token", "access-token", "session-token", "security-token",
    "subscription-key", "cookie", "secret", "password",
)  # fmt: skip
# Parts of names (normalised) that contain a credential name part yet name no secret: LiteLLM's metadata
# about the virtual key (``user_api_key_hash``, ``user_api_key_team_id`` …; a bare ``user_api_key`` has no
# trailing '-', so it is still a credential) and its ``used_client_oauth_token`` flag. A name is judged
# with them left out.
NOT_CREDENTIAL_PARTS = ("user-api-key-", "used-client-oauth-token")
# Query parameters whose values are credentials (normalised like header names).
CREDENTIAL_QUERY_PARAMS = frozenset({
    "key", "api-key", "apikey", "access-token", "token", "id-token", "refresh-token", "auth", "client-secret",
    "secret", "password", "sig", "signature", "x-amz-signature", "x-amz-security-token", "x-goog-signature",
})  # fmt: skip
REDACTED = "REDACTED"
# ASCII lower case, and '_' read as '-', as header names are normalised (for the byte scan).
_FOLD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_", b"abcdefghijklmnopqrstuvwxyz-")

_URL_PREFIXES = ("http://", "https://", "ws://", "wss://", "/")
_URL_KEYS = ("path", "url", "uri", "endpoint", "href", "location", "referer", "referrer")
_QUERY_PARAM = re.compile(r"([?&;])([^=&;#\s]+)=([^&;#\s]*)")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@\s:]*):([^/?#@\s]*)@")
# A header line: optional indentation, a token, optional blanks, a colon, the value up to the line end.
_HEADER_LINE = re.compile(rb"(?m)^([ \t]*)([!#$%&'*+.^_`|~0-9A-Za-z-]+)([ \t]*:[ \t]*)([^\r\n]*)")
_NAME_KEYS = ("name", "key", "header", "field")
# OpenTelemetry's HTTP conventions capture a header as an attribute named by one of these and the header.
_OTEL_HEADER_PREFIXES = ("http.request.header.", "http.response.header.")
# A JSON ``"name": "value"`` pair (or ``"name": ["value"``) in text that is not (or no longer) JSON, also
# inside JSON text quoted once or more (``\"name\": \"value\"``: the same run of backslashes before each
# quote). The value ends at its first quote or backslash: credentials hold neither.
_JSON_PAIR = re.compile(
    rb'(?P<q>\\*)"(?P<name>(?:[^"\\\r\n]|\\u[0-9a-fA-F]{4}){1,200})(?P=q)"(?P<sep>[ \t\r\n]*:[ \t\r\n]*'
    rb'(?:\[[ \t\r\n]*)?)(?P=q)"(?P<value>[^"\\]*)')
_JSON_OPENERS = ("{", "[")
_JSON_ESCAPE = re.compile(rb"\\u00([2-7][0-9a-f])")  # on folded bytes: an escaped printable ASCII character


def normalise_header_name(name: Any) -> str | None:
    """The comparable form of a header name (text or UTF-8 bytes); None when it is neither."""
    if isinstance(name, bytes | bytearray | memoryview):
        try:
            name = bytes(name).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(name, str):
        return None
    normal = name.strip().rstrip(":").strip().lower().replace("_", "-")
    if normal.startswith(_OTEL_HEADER_PREFIXES):
        return normal.partition(".header.")[2]
    return normal[5:] if normal.startswith("http-") else normal


def _is_otel_header_key(key: Any) -> bool:
    return isinstance(key, str) and key.strip().lower().startswith(_OTEL_HEADER_PREFIXES)


def _as_text(name: Any) -> Any:
    """A byte-string header name as text (JSON and Parquet have no byte-string keys)."""
    if isinstance(name, bytes | bytearray | memoryview):
        return bytes(name).decode("utf-8", "backslashreplace")
    return name


class CredentialPolicy:
    """The credential rules of one exporter: the built-in ones plus its ``spec.stripHeaders``."""

    def __init__(self, extra_headers: Iterable[str] = ()) -> None:
        extra = {n for n in (normalise_header_name(h) for h in extra_headers) if n}
        self.extra_headers = frozenset(extra)
        self.exact = CREDENTIAL_HEADERS | self.extra_headers
        names = [*CREDENTIAL_NAME_PARTS, *self.exact]
        params = [f"{p}=" for p in CREDENTIAL_QUERY_PARAMS]
        # The scan folds the bytes as normalisation does ('_' read as '-'), so each name has one form.
        forms = {name.encode().translate(_FOLD) for name in names + params}
        # A marker that contains a shorter one is redundant: the shorter one matches wherever it does.
        self.markers = tuple(sorted(m for m in forms if not any(o != m and o in m for o in forms)))
        # NOT_CREDENTIAL_PARTS, which the scan leaves out; not when a name the exporter strips exactly
        # contains one (``stripHeaders: [user_api_key_hash]``): then they are looked at.
        self.not_credential = () if any(p in name for p in NOT_CREDENTIAL_PARTS for name in self.exact) else tuple(
            part.encode() for part in NOT_CREDENTIAL_PARTS)

    def might_hold(self, canonical: bytes) -> bool:
        """Whether a record whose canonical CBOR is ``canonical`` could hold anything this policy strips."""
        lowered = canonical.translate(_FOLD)  # lower case, '_' as '-': one pass, and half the markers
        if self._marked(lowered):
            return True
        # JSON text may spell a name with escapes (``"\\u0041uthorization"``): read them and look again.
        if b"\\u00" in lowered:
            unescaped = _JSON_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), lowered)
            return unescaped != lowered and self._marked(unescaped.translate(_FOLD))
        return False

    def _marked(self, lowered: bytes) -> bool:
        if not any(marker in lowered for marker in self.markers):
            return False
        if not self.not_credential:
            return True
        # Found a marker; it may only be inside a name that is no credential (LiteLLM's metadata keys).
        # Leaving those parts out cannot hide a marker: none starts or ends inside one of them.
        for part in self.not_credential:
            if part in lowered:
                lowered = lowered.replace(part, b"")
        return any(marker in lowered for marker in self.markers)

    def is_credential_header(self, name: Any) -> bool:
        normal = normalise_header_name(name)
        if normal is None:
            return False
        if normal in self.exact:
            return True
        if "user-api-key-" in normal or "used-client-oauth-token" in normal:
            for part in NOT_CREDENTIAL_PARTS:
                normal = normal.replace(part, "")
        return any(part in normal for part in CREDENTIAL_NAME_PARTS)

    def _is_exact(self, name: Any) -> bool:
        normal = normalise_header_name(name)
        return normal is not None and normal in self.exact

    def _is_query_credential(self, name: str) -> bool:
        normal = normalise_header_name(name)
        return normal is not None and (normal in CREDENTIAL_QUERY_PARAMS or self.is_credential_header(normal))

    # -- strings -------------------------------------------------------------------------------------

    def redact_url(self, value: str) -> str:
        """``value`` with credential query values and a userinfo password replaced by REDACTED."""
        if "?" not in value and "@" not in value and ";" not in value:
            return value

        def param(match: re.Match[str]) -> str:
            if self._is_query_credential(match.group(2)) and match.group(3) != REDACTED:
                return f"{match.group(1)}{match.group(2)}={REDACTED}"
            return match.group(0)

        redacted = _QUERY_PARAM.sub(param, value)
        redacted = _USERINFO.sub(lambda m: f"{m.group(1)}:{REDACTED}@" if m.group(2) != REDACTED else m.group(0),
                                 redacted)
        return value if redacted == value else redacted

    def redact_lines(self, value: bytes) -> bytes:
        """``value`` with the value of every credential header line (``Authorization: …``) and of every
        JSON pair naming a credential (``"api_key": "…"``) replaced by REDACTED."""
        if b":" not in value or not self.might_hold(value):
            return value
        redacted_value = REDACTED.encode()

        def line(match: re.Match[bytes]) -> bytes:
            name = match.group(2)
            if self.is_credential_header(name) and match.group(4) != redacted_value:
                return match.group(1) + name + match.group(3) + redacted_value
            return match.group(0)

        def pair(match: re.Match[bytes]) -> bytes:
            if match.group("value") == redacted_value or not self.is_credential_header(_json_name(match["name"])):
                return match.group(0)
            return match.group(0)[:match.start("value") - match.start()] + redacted_value

        redacted = _JSON_PAIR.sub(pair, _HEADER_LINE.sub(line, value))
        return value if redacted == value else redacted

    # -- text and bytes that hold JSON or header lines -----------------------------------------------

    def _scrub_text(self, value: str, headers: bool = False) -> str:
        """Text with its credentials out (``_scrub_bytes`` on its UTF-8); the same object when nothing was
        removed."""
        if ":" not in value and value.lstrip()[:1] not in _JSON_OPENERS:
            return value  # no header line, no JSON pair, no JSON (most strings: checked before any encoding)
        data = value.encode("utf-8", "surrogatepass")
        scrubbed = self._scrub_bytes(data, headers)
        return value if scrubbed is data else scrubbed.decode("utf-8", "surrogatepass")

    def _scrub_bytes(self, value: bytes, headers: bool = False) -> bytes:
        """A byte string with its credentials out: JSON walked as JSON (re-serialised only when something
        was removed), anything else with its credential header lines and JSON pairs redacted. The same
        object when nothing was removed."""
        if b":" not in value and value.lstrip()[:1] not in (b"{", b"["):
            return value
        if not self.might_hold(value):
            return value
        scrubbed = self._scrub_json(value, headers)
        return self.redact_lines(value) if scrubbed is None else scrubbed

    def _scrub_json(self, data: bytes, headers: bool) -> bytes | None:
        """JSON text without its credentials (``data`` itself when it holds none); None when ``data`` is
        not a JSON object or array."""
        if data.lstrip()[:1] not in (b"{", b"["):
            return None
        # The standard library's parser keeps integers beyond 64 bits exact (orjson reads them as floats);
        # orjson reads what nests deeper than the interpreter's recursion limit.
        try:
            parsed = json.loads(data)
        except RecursionError:
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                return None
        except ValueError:
            return None
        changed = False
        if headers:
            parsed, changed = self._strip_header_container(parsed)
        changed = self.strip(parsed) or changed
        return _dump_json(parsed) if changed else data

    # -- containers ----------------------------------------------------------------------------------

    def _strip_header_container(self, headers: Any) -> tuple[Any, bool]:
        """Headers in any shape, without credential entries; whether anything changed."""
        if isinstance(headers, dict):
            kept: dict[Any, Any] = {}
            changed = False
            for name, value in headers.items():
                if self.is_credential_header(name):
                    changed = True
                    continue
                text = _as_text(name)
                changed |= text is not name
                kept[text] = value
            return (kept, True) if changed else (headers, False)
        if isinstance(headers, list):
            kept_items = []
            changed = False
            for item in headers:
                name = self._entry_name(item)
                if name is not None and self.is_credential_header(name):
                    changed = True
                    continue
                if isinstance(item, list) and item and isinstance(item[0], bytes | bytearray):
                    item = [_as_text(item[0]), *item[1:]]
                    changed = True
                elif isinstance(item, str | bytes):
                    redacted = self._scrub_text(item) if isinstance(item, str) else self._scrub_bytes(item)
                    changed |= redacted is not item
                    item = redacted
                kept_items.append(item)
            return (kept_items, True) if changed else (headers, False)
        if isinstance(headers, str):
            redacted_text = self._scrub_text(headers, headers=True)
            return redacted_text, redacted_text is not headers
        if isinstance(headers, bytes):
            redacted_bytes = self._scrub_bytes(headers, headers=True)
            return redacted_bytes, redacted_bytes is not headers
        return headers, False

    @staticmethod
    def _entry_name(item: Any) -> Any:
        """The header name of one list entry: ``[name, value]``, ``{name: …, value: …}``, ``"Name: value"``."""
        if isinstance(item, list | tuple) and item and isinstance(item[0], str | bytes | bytearray):
            return item[0]
        if isinstance(item, dict):
            for key, value in item.items():
                if isinstance(key, str) and key.lower() in _NAME_KEYS and isinstance(value, str | bytes):
                    return value
            return None
        if isinstance(item, bytes):
            name, colon, _ = item.partition(b":")
            return name if colon else None
        if isinstance(item, str):
            text_name, text_colon, _ = item.partition(":")
            return text_name if text_colon else None
        return None

    def strip(self, record: Any) -> bool:
        """Remove every credential from a decoded record, in place; whether anything was removed or
        rewritten. Containers are visited once each (an iterative walk: no recursion limit to hit)."""
        changed = False
        stack: list[Any] = [record]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, dict):
                changed |= self._redact_named_value(node)
                for key in list(node):
                    value = node[key]
                    normal = normalise_header_name(key)
                    if normal is not None and (normal in self.exact or normal == "cookies" or (
                            _is_otel_header_key(key) and self.is_credential_header(normal))):
                        del node[key]
                        changed = True
                        continue
                    if normal is not None and normal.endswith("headers"):
                        value, removed = self._strip_header_container(value)
                        if removed:
                            node[key] = value
                            changed = True
                    new = self._scrub_scalar(value, normal)
                    if new is not value:
                        node[key] = new
                        changed = True
                    elif isinstance(value, dict | list):
                        stack.append(value)
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    new = self._scrub_scalar(value, None)
                    if new is not value:
                        node[index] = new
                        changed = True
                    elif isinstance(value, dict | list):
                        stack.append(value)
        return changed

    def _redact_named_value(self, node: dict[Any, Any]) -> bool:
        """A ``{name: …, value: …}`` entry (HAR headers, query strings, form fields) naming a credential
        header or query parameter, wherever it is: its value is redacted."""
        name = self._entry_name(node)
        if name is None or not (self.is_credential_header(name) or self._is_query_credential(_as_text(name))):
            return False
        changed = False
        for key in list(node):
            if isinstance(key, str) and key.lower() in ("value", "values") and node[key] != REDACTED:
                node[key] = REDACTED
                changed = True
        return changed

    def _scrub_scalar(self, value: Any, key: str | None) -> Any:
        """A string or byte string with its credentials redacted (the same object when it has none)."""
        if isinstance(value, str):
            if value.startswith(_URL_PREFIXES) or (key is not None and _url_key(key)):
                value = self.redact_url(value)
            return self._scrub_text(value)
        if isinstance(value, bytes):
            return self._scrub_bytes(value)
        return value


def _json_name(name: bytes) -> bytes:
    """A name as a JSON pair spells it, with its ``\\uXXXX`` escapes read."""
    if b"\\u" not in name:
        return name
    try:
        return str(orjson.loads(b'"' + name + b'"')).encode()
    except orjson.JSONDecodeError:
        return name


def _dump_json(value: Any) -> bytes:
    """Compact JSON: orjson's; the standard library's for what orjson refuses (integers beyond 64 bits,
    nesting deeper than 255 levels)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        pass
    try:
        # ASCII: a lone surrogate escape (``\\ud800``, which JSON allows) stays an escape, valid UTF-8.
        return json.dumps(value, separators=(",", ":")).encode()
    except RecursionError:
        return orjson.dumps(None)  # deeper than either can write: nothing of it, rather than a credential


def _url_key(key: str) -> bool:
    return key in _URL_KEYS or key.endswith(("-url", "-uri", "url", "uri"))


DEFAULT_POLICY = CredentialPolicy()
