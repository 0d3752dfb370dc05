"""Synthetic LLM gateway capture records, for ``capture-export seed`` and the benchmarks.

The records follow the capture record schema v2 (see ``store/records.py``) and look like what a gateway
in front of OpenAI, Anthropic and Gemini captures: requests grouped into sessions per identity, the
provider-specific request and response bodies, tool calls, token usage and an estimated cost consistent
with the model's price, mostly successful but some rate-limited or failed requests, and:

* about 10% of records carry credential headers (``authorization``, ``x-api-key``, ``api-key``,
  ``cookie``, ``proxy-authorization`` in the request, ``set-cookie`` in the response) with varying
  capitalisation, so tests can prove they are stripped; the other records contain none of the marker
  strings at all;
* about 3% carry a raw binary request body (a fake PNG, JPEG, WAV or PDF of a few KB), and some of those
  a raw binary response body too;
* about 5% have no ``estimated_cost`` (cost unknown).

Text is drawn from a fixed pool of sentences built from an English-ish vocabulary, so the encoded records
compress like real traffic (zstd level 3: about 5x) and average about 3.5 KB of CBOR each. Generation is
deterministic for a given ``seed`` and ``start``; the sentence pool is built once per process.

The package: ``catalogue`` (models, tools, people, clients: data), ``text`` (the sentence pools),
``sessions`` (identities and their conversations), ``providers`` (each API's request and response
bodies), ``generator`` (one record per request) and ``writer`` (records into a store).
"""

from __future__ import annotations

from .catalogue import MODELS
from .generator import generate_records
from .writer import SeedTarget, seed_store

__all__ = ["MODELS", "SeedTarget", "generate_records", "seed_store"]
