"""`pgparent doctor`'s knowledge of the managed services, without a server: how each is recognised, and that the
default protect lists keep what each reserves."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli.doctor import PROVIDERS, Line, Provider, _protected, label_notes, recognise, same_address
from exporter.core.settings import Config, Protect, TargetConfig
from exporter.pg.database import ServerFacts


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.key)
def test_each_service_is_recognised_by_each_of_its_marks(provider: Provider) -> None:
    """A service is named by any one of its roles, databases or settings, and by nothing of another's."""
    marks = [ServerFacts((r,), (), (), 0) for r in provider.roles]
    marks += [ServerFacts((), (d,), (), 0) for d in provider.databases]
    marks.append(ServerFacts((), (), (provider.prefix + "some_setting",), 0))
    for facts in marks:
        assert recognise(facts) is provider, facts
    assert recognise(ServerFacts(("postgres",), ("postgres",), ("shared_buffers",), 0)) is None


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.key)
def test_the_default_protect_lists_keep_every_services_own_roles(provider: Provider) -> None:
    """With the default config, every service's reserved roles are protected (doctor says ok), and its customers'
    group roles are not asked for; a list that drops them is a fix naming them."""
    assert set(provider.reserved) <= set(Protect().users) and set(provider.reserved) <= set(provider.roles)
    ((line,),) = [_protected(provider, Config())]
    assert line.status == "ok", line
    dropped = Config(protect=Protect(users=("replication",)))
    ((line,),) = [_protected(provider, dropped)]
    assert line.status == "fix" and all(r in line.text for r in provider.reserved), line


def test_fleet_notes_without_connecting() -> None:
    """Label names some targets lack are named with the targets that lack them; two targets on one host and port,
    one reading every database, are named; `sessions: database` on both is fine."""
    a = TargetConfig(name="a", dsn="host=db1 dbname=x", labels={"region": "eu"})
    b = TargetConfig(name="b", dsn="host=db1 port=5432 dbname=y")
    c = TargetConfig(name="c", dsn="host=db1 dbname=z", sessions="database")
    d = TargetConfig(name="d", dsn="host=db1 dbname=w", sessions="database")
    assert label_notes([a, b, c]) == ["label 'region' is exported empty for the targets without it: b, c"]
    (warning,) = same_address([(a, str(a.dsn)), (b, str(b.dsn))])
    assert warning.startswith("targets: a, b reach db1:5432, and a, b read every database's sessions")
    assert same_address([(c, str(c.dsn)), (d, str(d.dsn))]) == []


PAGES = {"azure": "azure.md", "rds": "rds.md", "cloudsql": "cloudsql.md", "alloydb": "cloudsql.md"}
"""The docs/managed page of each service."""


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.key)
def test_each_services_page_shows_the_lines_doctor_prints_for_it(provider: Provider) -> None:
    """docs/managed/<service>.md shows, verbatim, the protect line and the notes doctor prints for that service, so
    the page and the code say the same."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "managed" / PAGES[provider.key]).read_text()
    wanted = [*_protected(provider, Config()), *(Line("note", f"{provider.key} {t}", x) for t, x in provider.advice)]
    missing = [str(line) for line in wanted if f"  {line}\n" not in page]
    assert not missing, missing
