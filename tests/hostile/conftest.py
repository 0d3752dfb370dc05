"""The hostile tier: tests that play the careless operator, the buggy gateway and the hostile tenant.

Each test reproduces one way the product's two promises (exactly once, nothing leaked) broke when the
product was handled carelessly or attacked, against real SeaweedFS, SQLite and PostgreSQL, and ends with
``verify`` finding nothing missing or duplicated, or with the documented refusal and nothing written.
The shared fixtures (S3 server, buckets, stores, PostgreSQL) come from tests/conftest.py.
"""
