"""Where parent tags come from, as pure functions: comment values decoded exactly or not at all, sources tried in
order, query tags only for live queries, groups that remember their sources, the config's `grouping.sources`, and
the guards a query-scoped tag or a transaction rule gives a signal."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.cli.render import groups_json, groups_table
from exporter.core.assess import assess
from exporter.core.grouping import group
from exporter.core.model import NO_GUARD, Guard
from exporter.core.policy import RuleState, evaluate, guard_for, manual
from exporter.core.settings import DEFAULT_PATTERN, parse_config
from exporter.core.tags import MAX_RAW_BYTES, MAX_TAG_CHARS, Sources, comment_value, in_query
from exporter.errors import ConfigInvalid
from tests.unit.factory import NOW, printable, session, snapshot, sqlcommenter

COMMENT_FIRST = Sources.of([("comment", "parent"), ("application_name", DEFAULT_PATTERN)])


# --- comment values ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "tag"),
    [
        (b"='etl%3A42'", "etl:42"),  # sqlcommenter: URL-decoded
        (b"='etl:42'", "etl:42"),
        (b"='it\\'s%20ok'", "it's ok"),  # \' escapes a quote
        (b"='a%%3Ab'", "a:b"),  # sqlcommenter-python's %% for DB-API drivers
        (b"='%C3%BCber'", "\u00fcber"),
        (b"='\xc3\xbcber'", "\u00fcber"),  # raw UTF-8 is read as it is
        (b":etl:42", "etl:42"),  # marginalia: the bare value
        (b":  Admin::Users  ", "Admin::Users"),  # spaces around it dropped
        (b":it's", "it's"),
    ],
)
def test_comment_values_are_decoded(raw: bytes, tag: str) -> None:
    """sqlcommenter values are unescaped and URL-decoded; marginalia values are taken as they are, trimmed."""
    assert comment_value(raw) == tag


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"=''",  # empty
        b":   ",
        b"='%zz'",  # a % that does not decode
        b"='100%'",
        b"='%C3'",  # percent-decodes to invalid UTF-8
        b"='\xff\xfe'",  # invalid UTF-8 as it stands
        b":\xc3",
        b"='a%0Ab'",  # a control character
        b":a\tb",
        b"='" + b"x" * (MAX_TAG_CHARS + 1) + b"'",  # longer than a tag may be
        b"='" + b"%41" * (MAX_RAW_BYTES // 3) + b"'",  # longer than a raw value may be
        b"'x'",  # neither form
        b"='unterminated",
    ],
)
def test_unreadable_comment_values_tag_nothing(raw: bytes | None) -> None:
    """What cannot be read exactly gives no tag, never a guess that could merge two tags into one group."""
    assert comment_value(raw) is None


@given(st.text(printable, min_size=1, max_size=MAX_TAG_CHARS))
def test_sqlcommenter_round_trip(value: str) -> None:
    """Any printable value, encoded as sqlcommenter encodes it, decodes back to itself."""
    assert comment_value(sqlcommenter(value)) == value


@given(st.binary(max_size=80))
def test_any_bytes_decode_or_refuse_without_error(raw: bytes) -> None:
    """Whatever a hostile client writes, reading it returns a printable tag or None, and never raises."""
    for form in (b"='" + raw + b"'", b":" + raw):
        tag = comment_value(form)
        assert tag is None or (tag.isprintable() and 0 < len(tag) <= MAX_TAG_CHARS)


# --- sources in order --------------------------------------------------------------------------------------------


def test_first_source_that_yields_wins() -> None:
    """A comment tag wins over application_name; without one, application_name still tags the session."""
    by_comment = session("web:1", comments=(sqlcommenter("etl:42"),))
    by_name = session("web:1", comments=(None,))
    tagged = COMMENT_FIRST.tag(by_comment)
    assert tagged is not None and tagged[0] == "etl:42" and tagged[1].label == "comment:parent"
    tagged = COMMENT_FIRST.tag(by_name)
    assert tagged is not None and tagged[0] == "web:1" and tagged[1].label == "application_name"
    assert COMMENT_FIRST.tag(session("psql", comments=(None,))) is None


@pytest.mark.parametrize(
    ("state", "counted"),
    [
        ("active", True),
        ("fastpath function call", True),
        ("idle in transaction", True),
        ("idle in transaction (aborted)", True),
        ("idle", False),
        (None, False),
    ],
)
def test_a_comment_tags_only_a_live_query(state: str | None, counted: bool) -> None:
    """An idle session's last comment is stale: it tags nothing (a later source may still tag the session)."""
    s = session("psql", state=state, comments=(sqlcommenter("etl:42"),))
    assert in_query(state) is counted
    assert (COMMENT_FIRST.tag(s) is not None) is counted
    g = group(snapshot(s), COMMENT_FIRST)
    assert ("etl:42" in g.groups) is counted and g.untagged.sessions == (0 if counted else 1)


def test_user_and_database_sources() -> None:
    """`user: REGEX` and `database: REGEX` tag by role and by database, through the named group `parent`."""
    sources = Sources.of([("user", r"^etl_(?P<parent>.+)$"), ("database", r"^(?P<parent>tenant_\d+)$")])
    rows = [
        session("", user="etl_nightly", db="app"),
        session("", user="web", db="tenant_7"),
        session("", user="web", db="app"),
    ]
    g = group(snapshot(*rows), sources)
    assert {p: [s.label for s in grp.sources] for p, grp in g.groups.items()} == {
        "nightly": ["user"],
        "tenant_7": ["database"],
    }
    assert g.untagged.sessions == 1


def test_a_group_remembers_which_sources_tagged_it() -> None:
    """A group fed by two sources lists both, in config order, and knows each session's source."""
    by_comment = session("x", comments=(sqlcommenter("job:1"),))
    by_name = session("job:1", comments=(None,))
    g = group(snapshot(by_name, by_comment), COMMENT_FIRST).groups["job:1"]
    assert [s.label for s in g.sources] == ["comment:parent", "application_name"]
    comment_source, name_source = g.source_of(by_comment.pid), g.source_of(by_name.pid)
    assert comment_source is not None and comment_source.query_scoped
    assert name_source is not None and not name_source.query_scoped
    assert groups_table(group(snapshot(by_name, by_comment), COMMENT_FIRST))[1].endswith(
        "comment:parent+application_name"
    )


def test_the_general_path_groups_as_the_fast_one() -> None:
    """One application_name source grouped by the fast path and, among other sources, by the general one agree."""
    rows = [session(a) for a in ("A:1", "A:1:x", "B:2", "psql", "", "B:2:y")]
    rows += [session("A:1", pid=9001), session("A:1", pid=9002, leader=9001, worker=True)]
    fast = group(snapshot(*rows), DEFAULT_PATTERN)
    general = group(snapshot(*rows), Sources.of([("comment", "parent"), ("application_name", DEFAULT_PATTERN)]))
    assert {p: g.sessions for p, g in fast.groups.items()} == {p: g.sessions for p, g in general.groups.items()}
    assert {p: g.workers for p, g in fast.groups.items()} == {p: g.workers for p, g in general.groups.items()}
    assert fast.untagged == general.untagged and fast.untagged_workers == general.untagged_workers


def test_a_worker_follows_its_leaders_comment_tag() -> None:
    """A parallel worker is counted in its leader's comment-tagged group."""
    leader = session("", pid=7001, comments=(sqlcommenter("etl:9"),))
    worker = session("", pid=7002, leader=7001, worker=True, comments=(sqlcommenter("etl:9"),))
    g = group(snapshot(leader, worker), COMMENT_FIRST)
    assert g.groups["etl:9"].workers == 1 and len(g.groups["etl:9"].sessions) == 1


def test_a_cut_query_is_counted_as_missed() -> None:
    """A live query whose text PostgreSQL cut, in which no comment key was found, is reported as missed, not
    grouped by a guess; a cut text whose leading comment was read, or an idle one, is not."""
    rows = [
        session("psql", query_cut=True, comments=(None,)),
        session("psql", query_cut=True, comments=(sqlcommenter("etl:1"),)),
        session("psql", state="idle", query_cut=True, comments=(None,)),
        session("psql", query_cut=False, comments=(None,)),
    ]
    g = group(snapshot(*rows), COMMENT_FIRST)
    assert g.comment_missed == 1 and g.untagged.sessions == 3
    assert "1 whose query text was cut before its comment" in groups_table(g)[-1]
    assert '"comment_tags_missed": 1' in groups_json(g)
    assert group(snapshot(*rows), DEFAULT_PATTERN).comment_missed == 0  # no comment source: nothing to miss


def test_a_key_given_twice_is_read_once() -> None:
    """Two comment sources on one key share one value of the poll."""
    sources = Sources.of([("comment", "a"), ("comment", "b"), ("comment", "a")])
    assert sources.comment_keys == ("a", "b")
    assert [s.slot for s in sources.sources] == [0, 1, 0]


# --- config ------------------------------------------------------------------------------------------------------


def test_sources_in_the_config() -> None:
    """grouping.sources is an ordered list of one-key mappings; compiled once per loaded config."""
    config = parse_config(
        {
            "grouping": {
                "sources": [
                    {"comment": "parent"},
                    {"application_name": DEFAULT_PATTERN},
                    {"user": "^(?P<parent>etl_.+)$"},
                    {"database": "^(?P<parent>.+)$"},
                ]
            }
        },
        "t.yaml",
    )
    compiled = config.grouping.compiled
    assert compiled is config.grouping.compiled
    assert compiled.labels == ("comment:parent", "application_name", "user", "database")
    assert compiled.comment_keys == ("parent",)


def test_pattern_is_the_shorthand_for_one_application_name_source() -> None:
    """Without sources, grouping.pattern (or its default) is the one application_name source."""
    assert parse_config({}, "t").grouping.compiled.only_application_name == re.compile(DEFAULT_PATTERN)
    custom = parse_config({"grouping": {"pattern": "^(?P<parent>[^-]+)"}}, "t").grouping.compiled
    assert custom.labels == ("application_name",) and custom.sources[0].argument == "^(?P<parent>[^-]+)"


@pytest.mark.parametrize(
    ("grouping", "errors"),
    [
        ({"sources": []}, ["F: grouping: sources needs at least one entry"]),
        (
            {"sources": [{"comment": "k"}], "pattern": "^(?P<parent>.)"},
            ["F: grouping: give sources or pattern, not both"],
        ),
        (
            {
                "sources": [
                    {"comment": "a b"},
                    {"user": "("},
                    {"database": "x"},
                    {},
                    {"comment": "k", "user": "^(?P<parent>.)"},
                    "comment: parent",
                    {"bogus": 1},
                ]
            },
            [
                "F: grouping.sources.0.comment: a comment key is 1 to 64 letters",
                "F: grouping.sources.1.user: not a valid regular expression",
                "F: grouping.sources.2.database: the regular expression needs a named group 'parent'",
                "F: grouping.sources.3: a source is exactly one of application_name: REGEX, comment: KEY",
                "F: grouping.sources.4: a source is exactly one of application_name: REGEX, comment: KEY, user: REGEX, "
                "database: REGEX (got comment, user)",
                "F: grouping.sources.5: a source is a mapping with one key",
                "F: grouping.sources.6.bogus: Extra inputs are not permitted",
            ],
        ),
        ({"sources": [{"comment": "k"}] * 9}, ["F: grouping.sources: at most 8 sources"]),
    ],
)
def test_source_errors_name_their_path(grouping: object, errors: list[str]) -> None:
    """Every problem in grouping.sources is reported at once, each as FILE: path: message."""
    with pytest.raises(ConfigInvalid) as caught:
        parse_config({"grouping": grouping}, "F")
    assert len(caught.value.errors) == len(errors)
    for line, start in zip(caught.value.errors, errors, strict=True):
        assert line.startswith(start), line


def test_audit_query_text_setting() -> None:
    """audit.query_text is excerpt by default, or none; anything else is an error."""
    assert parse_config({}, "t").audit.query_text == "excerpt"
    assert parse_config({"audit": {"query_text": "none"}}, "t").audit.query_text == "none"
    with pytest.raises(ConfigInvalid) as caught:
        parse_config({"audit": {"query_text": "full"}}, "F")
    assert caught.value.errors[0].startswith("F: audit.query_text: ")


# --- guards ------------------------------------------------------------------------------------------------------


def test_a_query_tag_pins_the_query_or_the_idle_spell() -> None:
    """A comment-tagged session is signalled only while the poll's query runs (query_start) or while it still sits
    idle in the very transaction around it (state_change); an application_name-tagged one keeps today's guard."""
    running = session("x", comments=(sqlcommenter("etl:1"),), query_age=30)
    waiting = session("x", state="idle in transaction", idle_since=5, xact_age=40, comments=(sqlcommenter("etl:1"),))
    named = session("etl:1", comments=(None,), query_age=30)
    grouped = group(snapshot(running, waiting, named), COMMENT_FIRST)
    grp = grouped.groups["etl:1"]
    assert guard_for("terminate", running, grp) == Guard(query_start=running.query_start)
    assert guard_for("terminate", waiting, grp) == Guard(state_change=waiting.state_change)
    assert guard_for("terminate", named, grp) == NO_GUARD
    assert guard_for("cancel", named, grp) == Guard(query_start=named.query_start)
    config = parse_config(
        {"grouping": {"sources": [{"comment": "parent"}, {"application_name": DEFAULT_PATTERN}]},
         "rules": [{"name": "big", "max_sessions": 1, "action": "terminate"}]},
        "t",
    )
    decision = evaluate(grouped, config, RuleState())
    by_pid = {t.session.pid: t for t in decision.signals}
    assert by_pid[running.pid].guard.query_start == running.query_start
    assert by_pid[running.pid].tag_source == "comment:parent"
    assert by_pid[named.pid].guard == NO_GUARD and by_pid[named.pid].tag_source == "application_name"
    asked = manual(grouped, "etl:1", "terminate", config.protect)
    assert {t.session.pid: t.guard for t in asked.signals}[waiting.pid] == Guard(state_change=waiting.state_change)


def test_a_transaction_rule_pins_the_transaction() -> None:
    """A rule that fired on a transaction duration ends only the very transaction it measured (xact_start)."""
    s = session("etl:1", state="idle in transaction", xact_age=600, idle_since=500)
    grouped = group(snapshot(s, now=NOW + timedelta(seconds=1)), DEFAULT_PATTERN)
    for condition in ("max_transaction_duration", "max_idle_in_transaction"):
        config = parse_config({"rules": [{"name": "r", condition: "1m", "action": "terminate"}]}, "t")
        (signal,) = evaluate(grouped, config, RuleState()).signals
        assert signal.guard == Guard(xact_start=s.xact_start), condition
    config = parse_config({"rules": [{"name": "r", "max_sessions": 0, "action": "terminate"}]}, "t")
    (signal,) = evaluate(grouped, config, RuleState()).signals
    assert signal.guard == NO_GUARD


def test_a_deadline_pins_the_query_of_comment_tagged_sessions() -> None:
    """At a deadline, the rest of a comment-tagged group is signalled with its own query pinned, as a poll would."""
    crossing = session("x", comments=(sqlcommenter("etl:1"),), query_age=50)
    other = session("x", comments=(sqlcommenter("etl:1"),), query_age=10)
    config = parse_config(
        {"grouping": {"sources": [{"comment": "parent"}, {"application_name": DEFAULT_PATTERN}]},
         "rules": [{"name": "long", "max_query_duration": "1m", "action": "terminate"}]},
        "t",
    )
    (deadline,) = assess(snapshot(crossing, other), config, deadlines=True).deadlines
    assert deadline.crossing is not None and deadline.crossing.session.pid == crossing.pid
    assert deadline.crossing.tag_source == "comment:parent"
    (rest,) = deadline.others
    assert rest.session.pid == other.pid and rest.guard.query_start == other.query_start
    assert rest.tag_source == "comment:parent"
