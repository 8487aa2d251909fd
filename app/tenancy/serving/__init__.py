"""The data path: what runs for every tenant request, and the worker's background threads.

Header and key to tenant (resolve, directory), tenant to connection (registry, engines,
budget, backoff, session), and the reaper thread with its change-event listener.
May import ``app.tenancy.errors``, ``app.crypto``, ``app.db``, ``app.dbwait`` and the
models; never ``app.tenancy.control`` (tests/tenancy/test_layout.py fails if it does).
"""
