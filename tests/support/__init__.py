"""The test suite's support, one module per concern.

Plugins (registered by tests/conftest.py, each holding the fixtures of its concern): `servers` (the PostgreSQL under
test), `roles` (roles and databases of a test's own), `sessions` (tagged client sessions on threads), `pgbouncer` (a
real PgBouncer in front of the server), `daemon` (pgparent processes), `proxy` (a black hole on demand), `azure`
(an emulated Azure flexible server: TLS only, the provider's superuser, a non-superuser admin). Helpers without
fixtures: `config` (a Config from a few keys), `tools` (programs outside the virtualenv), `figures` (measured values
for docs/RELIABILITY.md), `pki` (throwaway certificates). What the benchmark needs as well (the daemon as a
process, /metrics, /proc, `eventually`, the stalling proxy) lives in the top-level `harness` package.
"""
