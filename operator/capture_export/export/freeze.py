"""Imported last by the encode pool's fork server (export/pool.py), after the modules its workers share.

``gc.freeze()`` moves every object the fork server holds (the modules it imported: the batch code, a
format's library) out of the cyclic garbage collector's reach. A worker forked from it shares those pages
with the fork server and its sibling workers until it writes to one; without the freeze, the worker's first
full collection writes to the header of every such object and so copies each page that holds one.
Nothing here is ever collected in a worker: modules live as long as the process.

What the imports freed goes back to the operating system, and a worker starts from that trim: what it keeps
for its next batch is counted from there (``release_freed_memory``, export/budget.py).
"""

from __future__ import annotations

import gc

from .budget import release_freed_memory

__all__: list[str] = []

gc.collect()
gc.freeze()
release_freed_memory()
