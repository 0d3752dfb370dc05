"""Imported last by the encode pool's fork server (export/pool.py), after the modules its workers share.

``gc.freeze()`` moves every object the fork server holds (the modules it imported: the batch code, a
format's library) out of the cyclic garbage collector's reach. A worker forked from it shares those pages
with the fork server and its sibling workers until it writes to one; without the freeze, the worker's first
full collection writes to the header of every such object and so copies each page that holds one.
Nothing here is ever collected in a worker: modules live as long as the process.
"""

from __future__ import annotations

import gc

__all__: list[str] = []

gc.collect()
gc.freeze()
