"""Every metric pgparent exports, declared once (name, help, type, labels), and the counters outcomes are counted in.

The collector's fast text renderer, its metric families for prometheus_client, and the counters below all read their
names, help texts and label names from these declarations; nothing else spells a metric's name. The counters live
here, not in the collector or the HTTP face: the enforcer and the loops report outcomes to them, scrapes read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter, disable_created_metrics
from prometheus_client.registry import CollectorRegistry

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: counters start with the process

MetricType = Literal["gauge", "counter", "info"]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name (a counter's without `_total`), help, type, and its own label names (a target's
    series also carry `target` and the target's constant labels first)."""

    name: str
    help: str
    type: MetricType = "gauge"
    labels: tuple[str, ...] = ()

    def counter(self, registry: CollectorRegistry | None) -> Counter:
        """The prometheus_client counter of this declaration, registered in `registry` (None: in none)."""
        assert self.type == "counter", self.name
        return Counter(self.name, self.help, list(self.labels), registry=registry)


def _gauge(name: str, help: str, *labels: str) -> Family:
    return Family(name, help, "gauge", labels)


def _counter(name: str, help: str, *labels: str) -> Family:
    return Family(name, help, "counter", labels)


# The process's own gauges.
POLL_INTERVAL = _gauge("pgparent_poll_interval_seconds", "Configured poll interval.")
RELOAD_OK = _gauge("pgparent_config_last_reload_successful", "1 if the last config (re)load succeeded.")
RELOAD_TIME = _gauge(
    "pgparent_config_last_reload_success_timestamp_seconds", "Unix time of the last successful config load."
)
BUILD = Family("pgparent_build", "pgparent build information.", "info")

# Each target's gauges.
UP = _gauge("pgparent_up", "1 if the last poll of the target succeeded.")
LAST_POLL = _gauge(
    "pgparent_last_poll_timestamp_seconds", "Unix time of the target's last successful poll (0 before the first)."
)
POLL_DURATION = _gauge("pgparent_poll_duration_seconds", "Duration of the target's last poll cycle.")
DRY_RUN = _gauge("pgparent_dry_run", "1 if no rule may signal on the target (dry run).")
ENFORCING = _gauge("pgparent_enforcing", "1 if this instance may signal the target's sessions now.")
LEADER = _gauge("pgparent_leader", "1 if this replica holds the target's leader lock (the one that enforces).")
VIOLATING = _gauge("pgparent_rule_violating_groups", "Groups for which the rule fires now.", "rule")
PENDING = _gauge("pgparent_rule_pending_groups", "Groups that exceed the rule but not yet for its 'for:'.", "rule")
RULE_ACTIVE = _gauge(
    "pgparent_rule_active",
    "1 if the target has every figure the rule reads; 0 where its guard conditions (memory, CPU, host memory) have "
    "none (another host, a managed service: see pgparent_cost_source_unavailable) and never fire.",
    "rule",
)

# Each target's groups.
GROUP_SESSIONS = _gauge("pgparent_group_sessions", "Client sessions of a group, by state.", "parent", "state")
GROUP_WORKERS = _gauge("pgparent_group_parallel_workers", "Parallel workers serving a group's sessions.", "parent")
GROUP_WAITING = _gauge("pgparent_group_waiting_sessions", "Active sessions of a group waiting on a lock.", "parent")
GROUP_BLOCKED = _gauge(
    "pgparent_group_blocked_sessions", "Sessions of a group waiting on a lock held by another session.", "parent"
)
GROUP_BLOCKING = _gauge(
    "pgparent_group_blocking_sessions",
    "Sessions of other groups, untagged ones included, waiting on a group's sessions, directly or through a chain.",
    "parent",
)
GROUP_MAX_BLOCKING = _gauge(
    "pgparent_group_max_blocking_seconds",
    "The longest any session has been waiting on a group's sessions (through a chain included).",
    "parent",
)
GROUP_MAX_QUERY = _gauge("pgparent_group_max_query_duration_seconds", "Longest running query of a group.", "parent")
GROUP_MAX_TRANSACTION = _gauge(
    "pgparent_group_max_transaction_duration_seconds", "Longest open transaction of a group.", "parent"
)
GROUP_AGE = _gauge("pgparent_group_age_seconds", "Time since the group's oldest session started.", "parent")
UNTAGGED_BLOCKING = _gauge(
    "pgparent_untagged_blocking_sessions", "Sessions waiting on untagged sessions, directly or through a chain."
)
PREPARED_BLOCKING = _gauge(
    "pgparent_prepared_transactions_blocking_sessions",
    "Sessions waiting on prepared transactions, directly or through a chain.",
)
UNTAGGED = _gauge("pgparent_untagged_sessions", "Client sessions with no parent tag, by state.", "state")
GROUPS = _gauge("pgparent_groups", "Tagged groups seen by the last poll.")
HIDDEN = _gauge(
    "pgparent_hidden_sessions",
    "Client sessions whose details the monitoring role cannot see (no pg_read_all_stats); never signalled.",
)
COMMENT_MISSED = _gauge(
    "pgparent_comment_tags_missed_sessions",
    "Sessions whose query text PostgreSQL cut at track_activity_query_size before a comment source could read a "
    "comment at its end (0 without comment sources).",
)
PROTECTED = _gauge(
    "pgparent_protected_sessions",
    "Sessions of firing groups a signalling rule left alone at the last poll because they are protected: named by "
    "protect: lists, or of a superuser role (or none) under protect.superusers; counted once per rule.",
)
GROUPS_DROPPED = _gauge("pgparent_groups_dropped", 'Groups folded into parent="__other__" by max_groups.')
GROUP_LISTENING = _gauge(
    "pgparent_group_listening_sessions",
    "Sessions of a group idle after a LISTEN, waiting for notifications: budgets never trim them.",
    "parent",
)

# What pgparent can see and do on each target, read once per connection (exporter/pg/database.py: Capabilities).
CAPABILITY = _gauge(
    "pgparent_capability",
    "1 if pgparent's connection to the target has the capability, else 0: superuser (its role is one), "
    "read_all_stats (pg_read_all_stats: other roles' sessions in full), signal_backend (pg_signal_backend), "
    "in_recovery (the server is a standby), pooler (a connection pooler stands between), tls (encrypted).",
    "capability",
)
QUERY_SIZE = _gauge(
    "pgparent_track_activity_query_size_bytes",
    "The server's track_activity_query_size: where it cuts the query texts pgparent reads (comments at their end).",
)
TLS_INFO = _gauge(
    "pgparent_connection_tls_info",
    "1, labelled with the sslmode in effect for pgparent's connection to the target and its TLS version (none: not "
    "encrypted).",
    "sslmode", "version",
)

# Each target's server's connection slots (exporter/core/model.py: Capacity).
SERVER_MAX_CONNECTIONS = _gauge("pgparent_server_max_connections", "The server's max_connections.")
SERVER_RESERVED = _gauge(
    "pgparent_server_reserved_connections",
    "Connection slots ordinary roles may not use: superuser_reserved_connections plus reserved_connections "
    "(PostgreSQL 16+).",
)
SERVER_CONNECTIONS = _gauge(
    "pgparent_server_connections",
    "Client backends counting against max_connections, server-wide, pgparent's own included.",
)
SERVER_HEADROOM = _gauge(
    "pgparent_server_connections_headroom",
    "Connection slots left for ordinary roles: max_connections less the reserved slots and those in use (never "
    "below 0).",
)
GROUP_SHARE = _gauge(
    "pgparent_group_connections_share_ratio",
    "A group's sessions as a fraction of the connection slots ordinary roles may use.",
    "parent",
)

# What each target's groups cost the server (exporter/core/cost.py): counters carried from poll to poll, gauges of
# the last poll, and where they come from.
GROUP_ACTIVE = _counter(
    "pgparent_group_active_seconds",
    "Seconds a group's sessions spent active, by wait_event_type (CPU: waiting on nothing); its rate() is the "
    "group's average active sessions.",
    "parent", "wait_event_type",
)
GROUP_CPU = _counter(
    "pgparent_group_cpu_seconds",
    "CPU seconds (utime + stime) used by a group's backends and their parallel workers, from /proc.",
    "parent",
)
GROUP_MEMORY = _gauge(
    "pgparent_group_memory_bytes",
    "Private memory (RssAnon: no shared_buffers pages) of a group's backends and their parallel workers, summed.",
    "parent",
)
GROUP_MAX_MEMORY = _gauge(
    "pgparent_group_max_session_memory_bytes",
    "Private memory (RssAnon) of a group's largest backend process.",
    "parent",
)
GROUP_READ = _counter(
    "pgparent_group_read_bytes",
    "Bytes a group's backends read from storage (/proc/<pid>/io read_bytes, else PostgreSQL 18's backend I/O).",
    "parent",
)
GROUP_WRITTEN = _counter(
    "pgparent_group_written_bytes",
    "Bytes a group's backends wrote to storage (/proc/<pid>/io write_bytes, else PostgreSQL 18's backend I/O writes "
    "and extends).",
    "parent",
)
GROUP_WAL = _counter(
    "pgparent_group_wal_bytes",
    "WAL bytes a group's backends generated (PostgreSQL 18's pg_stat_get_backend_wal, published when a backend goes "
    "idle outside a transaction).",
    "parent",
)
HOST_MEMORY_AVAILABLE = _gauge(
    "pgparent_host_memory_available_bytes",
    "Memory available to the server: the host's MemAvailable, or its memory cgroup's limit less its working set.",
)
HOST_MEMORY = _gauge(
    "pgparent_host_memory_bytes", "Memory of the server's host (MemTotal), or its memory cgroup's limit."
)
COST_SOURCE = _gauge(
    "pgparent_cost_source_available",
    "1 if the cost source gives figures for the target: proc (CPU, memory), proc_io (bytes read and written), "
    "backend_stats (PostgreSQL 18: WAL).",
    "source",
)
COST_SOURCE_UNAVAILABLE = _gauge(
    "pgparent_cost_source_unavailable",
    "1, for each cost source that gives no figures for the target, with the reason why (see the README).",
    "source", "reason",
)

# Counters.
POLLS = _counter("pgparent_polls", "Poll cycles completed, successful or not.", "target")
POLL_ERRORS = _counter("pgparent_poll_errors", "Polls that failed.", "target")
CONNECT_FAILURES = _counter(
    "pgparent_connect_failures",
    "Connection attempts that failed, by reason: auth (credential refused), rejected (pg_hba.conf), tls, unreachable, "
    "credential (the password source gave none), other.",
    "target", "reason",
)
SIGNALLED = _counter(
    "pgparent_signalled_sessions",
    "Sessions signalled successfully, by rule, action (terminate or cancel) and trigger (poll, deadline or sample).",
    "target", "rule", "action", "trigger",
)
SIGNAL_FAILURES = _counter(
    "pgparent_signal_failures",
    "Signals not delivered, by rule, reason and trigger (poll, deadline or sample).",
    "target", "rule", "reason", "trigger",
)
DEFERRED = _counter(
    "pgparent_signals_deferred", "Signals postponed by max_terminations_per_cycle.", "target", "rule"
)
DEADLINE_WAKEUPS = _counter(
    "pgparent_deadline_wakeups",
    "Times a target's loop woke between polls for a limit crossed at a moment the last poll foresaw.",
    "target",
)
ESCALATION_STEPS = _counter(
    "pgparent_escalation_steps",
    "Steps of rules that escalate (cancel, then terminate), by step and result (no_query: a cancel step for a session "
    "running no query, which only starts the delay).",
    "target", "rule", "step", "result",
)
GUARD_ACTIONS = _counter(
    "pgparent_guard_actions",
    "Sessions signalled successfully because a guard condition fired (max_session_memory, max_group_memory, "
    "max_group_cpu, max_group_load), by rule, condition and action.",
    "target", "rule", "condition", "action",
)
MEMORY_SAMPLES = _counter(
    "pgparent_memory_samples",
    "Times a target's sessions under a memory condition were sampled between polls.",
    "target",
)
GLANCES = _counter(
    "pgparent_glances",
    "Reads between polls of the sessions that began a query, transaction or connection since the last poll, for time "
    "limits shorter than two intervals.",
    "target",
)
SCRAPE_ERRORS = _counter(
    "pgparent_scrape_errors", "Scrapes whose metrics could not be built (they reported pgparent_up 0)."
)
HTTP_AUTH_FAILURES = _counter(
    "pgparent_http_auth_failures",
    "Requests to the HTTP face refused for their credentials, by reason (busy: 503, too many checks at once).",
    "reason",
)
HTTP_ERRORS = _counter(
    "pgparent_http_errors", "Requests answered 500 because handling them failed (each logged with its traceback)."
)

FAMILIES: tuple[Family, ...] = tuple(v for v in tuple(globals().values()) if isinstance(v, Family))
"""Every declaration above, in the order written."""


class Counters:
    """The daemon's counters: prometheus_client metrics of the declarations above, written by the loops and the
    enforcer, read by scrapes.

    Every counter incremented anywhere is one of these, so every one is exported. They live on a registry of their
    own; the collector re-emits them with each target's constant labels added.
    """

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        self.polls = POLLS.counter(r)
        self.poll_errors = POLL_ERRORS.counter(r)
        self.connect_failures = CONNECT_FAILURES.counter(r)
        self.signalled = SIGNALLED.counter(r)
        self.signal_failures = SIGNAL_FAILURES.counter(r)
        self.deferred = DEFERRED.counter(r)
        self.deadline_wakeups = DEADLINE_WAKEUPS.counter(r)
        self.escalation_steps = ESCALATION_STEPS.counter(r)
        self.memory_samples = MEMORY_SAMPLES.counter(r)
        self.guard_actions = GUARD_ACTIONS.counter(r)
        self.glances = GLANCES.counter(r)
        self.scrape_errors = SCRAPE_ERRORS.counter(r)
