"""Subscriber records: add, find, unsubscribe, remove and suppression, list, counts,
status changes, and the double opt-in core."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, func, select

from newsletter.errors import SubscriberError
from newsletter.store import subscribers
from newsletter.store.subscribers import Consent
from newsletter.store.tables import consents, suppressions
from newsletter.store.tables import subscribers as table

NOW = dt.datetime(2024, 10, 25, 12, 0, tzinfo=dt.UTC)


def test_add_and_find_in_any_case(engine: Engine) -> None:
    added = subscribers.add(engine, " Ann.Lee@Example.ORG ", name="Ann Lee", source="cli", now=NOW)
    assert added.email == "Ann.Lee@Example.ORG"
    assert added.email_key == "ann.lee@example.org"
    assert (added.status, added.source, added.created_at) == ("active", "cli", NOW)
    assert subscribers.get(engine, "ann.lee@EXAMPLE.org") == added
    assert subscribers.get_by_token(engine, added.token) == added
    assert subscribers.get_by_id(engine, added.id) == added
    assert subscribers.get(engine, "nobody@example.org") is None


def test_tokens_are_unguessable_and_unique(engine: Engine) -> None:
    tokens = [subscribers.add(engine, f"r{i}@example.org").token for i in range(20)]
    assert len(set(tokens)) == 20
    assert all(len(t) >= 43 + 13 for t in tokens)  # 256 random bits after the time prefix


def test_an_address_is_added_once(engine: Engine) -> None:
    subscribers.add(engine, "ann@example.org")
    with pytest.raises(SubscriberError, match=r"^ANN@example.org is already on the list \(active\)$"):
        subscribers.add(engine, "ANN@example.org")


def test_invalid_input_is_refused(engine: Engine) -> None:
    with pytest.raises(SubscriberError, match="invalid email address 'not-an-address'"):
        subscribers.add(engine, "not-an-address")
    with pytest.raises(SubscriberError, match="the name must be a single line"):
        subscribers.add(engine, "ann@example.org", name="Ann\r\nBcc: x@example.org")
    with pytest.raises(SubscriberError, match="a new subscriber is active or pending, not bounced"):
        subscribers.add(engine, "ann@example.org", status="bounced")
    with pytest.raises(SubscriberError, match="unknown status 'gone'"):
        subscribers.add(engine, "ann@example.org", status="gone")


def test_unsubscribe_is_idempotent(engine: Engine) -> None:
    subscribers.add(engine, "ann@example.org")
    first = subscribers.unsubscribe(engine, "ANN@example.org", now=NOW)
    assert first.status == "unsubscribed" and first.unsubscribed_at == NOW
    again = subscribers.unsubscribe(engine, "ann@example.org", now=NOW + dt.timedelta(days=1))
    assert again.unsubscribed_at == NOW
    with pytest.raises(SubscriberError, match="^nobody@example.org is not on the list$"):
        subscribers.unsubscribe(engine, "nobody@example.org")


def test_unsubscribe_by_token(engine: Engine) -> None:
    added = subscribers.add(engine, "ann@example.org")
    assert subscribers.unsubscribe_by_token(engine, added.token).status == "unsubscribed"
    with pytest.raises(SubscriberError, match="this unsubscribe link is not valid"):
        subscribers.unsubscribe_by_token(engine, "forged")


def test_opted_out_add_needs_resubscribe(engine: Engine) -> None:
    added = subscribers.add(engine, "ann@example.org")
    subscribers.unsubscribe(engine, "ann@example.org")
    with pytest.raises(SubscriberError, match=r"already on the list \(unsubscribed\) \(use --resubscribe"):
        subscribers.add(engine, "ann@example.org")
    back = subscribers.add(engine, "ann@example.org", resubscribe=True)
    assert back.status == "active" and back.unsubscribed_at is None
    assert back.token == added.token  # generated once


def test_remove_erases_and_suppresses(engine: Engine) -> None:
    subscribers.add(engine, "ann@example.org", name="Ann", attributes={"city": "Oslo"})
    assert subscribers.remove(engine, "Ann@Example.org") is True
    assert subscribers.get(engine, "ann@example.org") is None
    with engine.connect() as conn:
        assert conn.execute(select(table)).all() == []
        kept = conn.execute(select(suppressions)).all()
    assert len(kept) == 1 and "ann" not in repr(tuple(kept[0]))  # only a hash is kept
    assert subscribers.is_suppressed(engine, "ANN@example.org")

    with pytest.raises(SubscriberError, match="was removed from the list at their request and is suppressed"):
        subscribers.add(engine, "ann@example.org")
    assert subscribers.add(engine, "ann@example.org", resubscribe=True).status == "active"
    assert not subscribers.is_suppressed(engine, "ann@example.org")


def test_remove_an_address_not_on_the_list_still_suppresses_it(engine: Engine) -> None:
    assert subscribers.remove(engine, "never@example.org") is False
    assert subscribers.remove(engine, "never@example.org") is False  # twice is fine
    assert subscribers.is_suppressed(engine, "never@example.org")
    assert subscribers.stats(engine).suppressed == 1


def test_list_search_and_pages(engine: Engine) -> None:
    for i in range(5):
        subscribers.add(engine, f"reader{i}@example.org", name=f"Reader {i}")
    subscribers.add(engine, "ann_100%@example.org", name="Ann")
    subscribers.add(engine, "bob@example.org", name="Bob Reader", status="pending")

    assert [s.email for s in subscribers.list_subscribers(engine, limit=2)] == [
        "reader0@example.org",
        "reader1@example.org",
    ]
    second = subscribers.list_subscribers(
        engine, limit=2, after_id=subscribers.list_subscribers(engine, limit=2)[-1].id
    )
    assert [s.email for s in second] == ["reader2@example.org", "reader3@example.org"]
    assert len(subscribers.list_subscribers(engine, search="READER")) == 6  # address or name
    assert [s.email for s in subscribers.list_subscribers(engine, search="reader", status="pending")] == [
        "bob@example.org"
    ]
    assert [s.email for s in subscribers.list_subscribers(engine, search="100%")] == ["ann_100%@example.org"]
    assert [s.email for s in subscribers.list_subscribers(engine, search="r_ader")] == []  # no wildcards


def test_count_and_stats(engine: Engine) -> None:
    for i in range(3):
        subscribers.add(engine, f"a{i}@example.org")
    subscribers.add(engine, "p@example.org", status="pending")
    subscribers.mark_status(engine, subscribers.add(engine, "b@example.org").id, "bounced")
    subscribers.remove(engine, "gone@example.org")
    assert subscribers.count(engine) == 5
    assert subscribers.count(engine, "active") == 3
    stats = subscribers.stats(engine)
    assert stats.by_status == {"pending": 1, "active": 3, "unsubscribed": 0, "bounced": 1, "complained": 0}
    assert (stats.total, stats.suppressed) == (5, 1)


def test_mark_status_by_token_or_id(engine: Engine) -> None:
    added = subscribers.add(engine, "ann@example.org")
    assert subscribers.mark_status(engine, added.token, "complained", now=NOW).status == "complained"
    assert subscribers.mark_status(engine, added.id, "bounced").status == "bounced"
    back = subscribers.mark_status(engine, added.id, "active")
    assert back.status == "active"
    unsub = subscribers.mark_status(engine, added.id, "unsubscribed", now=NOW)
    assert unsub.unsubscribed_at == NOW
    with pytest.raises(SubscriberError, match="no subscriber with id 999"):
        subscribers.mark_status(engine, 999, "bounced")
    with pytest.raises(SubscriberError, match="no subscriber with token forgedto..."):
        subscribers.mark_status(engine, "forgedtoken", "bounced")
    with pytest.raises(SubscriberError, match="unknown status"):
        subscribers.mark_status(engine, added.id, "deleted")


# -- double opt-in ------------------------------------------------------------------

CONSENT = Consent(at=NOW, ip="203.0.113.7", user_agent="Mozilla/5.0", form="footer")


def test_sign_up_then_confirm(engine: Engine) -> None:
    signed = subscribers.sign_up(engine, "New@Example.org", consent=CONSENT, name="New", now=NOW)
    assert signed.confirmation_token
    pending = signed.subscriber
    assert (pending.status, pending.source, pending.consent) == ("pending", "web", CONSENT)

    confirmed = subscribers.confirm(engine, signed.confirmation_token, now=NOW + dt.timedelta(hours=1))
    assert confirmed.status == "active"
    assert confirmed.confirmed_at == NOW + dt.timedelta(hours=1)
    assert confirmed.token == pending.token
    with pytest.raises(SubscriberError, match="not valid, or was used already"):
        subscribers.confirm(engine, signed.confirmation_token)


def test_confirmation_token_is_not_stored_in_clear(engine: Engine) -> None:
    signed = subscribers.sign_up(engine, "new@example.org", consent=CONSENT, now=NOW)
    assert signed.confirmation_token is not None
    with engine.connect() as conn:
        stored = conn.execute(select(table.c.confirmation_hash)).scalar_one()
    assert stored and signed.confirmation_token not in stored


def test_expired_confirmation(engine: Engine) -> None:
    signed = subscribers.sign_up(engine, "late@example.org", consent=CONSENT, now=NOW)
    assert signed.confirmation_token is not None
    later = NOW + subscribers.CONFIRMATION_TTL + dt.timedelta(seconds=1)
    with pytest.raises(SubscriberError, match="this confirmation link has expired: please sign up again"):
        subscribers.confirm(engine, signed.confirmation_token, now=later)

    assert subscribers.expire_pending(engine, now=NOW) == subscribers.Expired(0, 0)  # not yet
    assert subscribers.expire_pending(engine, now=later) == subscribers.Expired(subscribers=1, consents=0)
    assert subscribers.get(engine, "late@example.org") is None  # never consented: forgotten
    with engine.connect() as conn:  # its consent record went with it
        assert conn.execute(select(func.count()).select_from(consents)).scalar_one() == 0


def test_confirmable_changes_nothing(engine: Engine) -> None:
    signed = subscribers.sign_up(engine, "Look@Example.org", consent=CONSENT, now=NOW)
    assert signed.confirmation_token is not None
    assert subscribers.confirmable(engine, signed.confirmation_token, now=NOW) == "Look@Example.org"
    assert subscribers.confirmable(engine, signed.confirmation_token, now=NOW) == "Look@Example.org"
    assert subscribers.get(engine, "look@example.org").status == "pending"  # type: ignore[union-attr]
    with pytest.raises(SubscriberError, match="expired"):
        subscribers.confirmable(engine, signed.confirmation_token, now=NOW + dt.timedelta(days=4))
    with pytest.raises(SubscriberError, match="not valid"):
        subscribers.confirmable(engine, "x" * 43, now=NOW)


def test_sign_up_when_already_active_gives_no_token(engine: Engine) -> None:
    subscribers.add(engine, "ann@example.org")
    signed = subscribers.sign_up(engine, "ann@example.org", consent=CONSENT, now=NOW)
    assert signed.confirmation_token is None and signed.subscriber.status == "active"


def test_sign_up_again_after_unsubscribing(engine: Engine) -> None:
    subscribers.add(engine, "ann@example.org", name="Ann")
    subscribers.unsubscribe(engine, "ann@example.org")
    signed = subscribers.sign_up(engine, "ann@example.org", consent=CONSENT, name="Someone else", now=NOW)
    assert signed.confirmation_token is not None and signed.subscriber is not None
    assert signed.subscriber.status == "unsubscribed"  # no mail until they confirm
    assert signed.subscriber.name == "Ann"  # nor another name

    later = NOW + subscribers.CONFIRMATION_TTL * 2
    assert subscribers.expire_pending(engine, now=later) == subscribers.Expired(subscribers=0, consents=1)
    kept = subscribers.get(engine, "ann@example.org")
    assert kept is not None and kept.status == "unsubscribed" and kept.name == "Ann"
    assert subscribers.consent_history(engine, kept.id) == []  # the unconfirmed sign-up is forgotten
    with pytest.raises(SubscriberError, match="not valid"):
        subscribers.confirm(engine, signed.confirmation_token, now=later)


@pytest.mark.parametrize("status", ["bounced", "complained"])
def test_bounced_and_complained_addresses_are_never_mailed(engine: Engine, status: str) -> None:
    added = subscribers.add(engine, "ann@example.org", name="Ann")
    subscribers.mark_status(engine, added.id, status)
    before = subscribers.get(engine, "ann@example.org")
    signed = subscribers.sign_up(engine, "ann@example.org", consent=CONSENT, name="X", now=NOW)
    assert (signed.confirmation_token, signed.outcome) == (None, "never-mailed")
    assert subscribers.get(engine, "ann@example.org") == before
    assert subscribers.consent_history(engine, added.id) == []


def test_a_removed_address_is_not_mailed(engine: Engine) -> None:
    """Erased at its owner's request: a form typed in by anyone must not mail it; the
    owner comes back through an editor (`subscribers add --resubscribe`)."""
    subscribers.remove(engine, "ann@example.org")
    signed = subscribers.sign_up(engine, "ann@example.org", consent=CONSENT, now=NOW)
    assert (signed.subscriber, signed.confirmation_token, signed.outcome) == (None, None, "suppressed")
    assert subscribers.get(engine, "ann@example.org") is None
    assert subscribers.is_suppressed(engine, "ann@example.org")


def test_confirmations_are_limited_per_address(engine: Engine) -> None:
    first = subscribers.sign_up(engine, "ann@example.org", consent=CONSENT, now=NOW)
    second = subscribers.sign_up(engine, "ann@example.org", consent=CONSENT, now=NOW + dt.timedelta(minutes=59))
    assert first.confirmation_token and (second.confirmation_token, second.outcome) == (None, "limited")
    assert subscribers.confirmable(engine, first.confirmation_token, now=NOW) == "ann@example.org"
    third = subscribers.sign_up(engine, "ann@example.org", consent=CONSENT, now=NOW + dt.timedelta(minutes=61))
    assert third.confirmation_token
    with pytest.raises(SubscriberError, match="not valid"):  # a new link spends the old one
        subscribers.confirm(engine, first.confirmation_token, now=NOW)
    assert subscribers.confirm(engine, third.confirmation_token, now=NOW).status == "active"
    assert subscribers.count(engine) == 1
    # a larger allowance, as web.confirmations_per_address sets it
    for n in range(3):
        signed = subscribers.sign_up(
            engine,
            "bob@example.org",
            consent=CONSENT,
            per_window=3,
            window=dt.timedelta(minutes=10),
            now=NOW + dt.timedelta(minutes=n),
        )
        assert signed.confirmation_token
    assert (
        subscribers.sign_up(
            engine,
            "bob@example.org",
            consent=CONSENT,
            per_window=3,
            window=dt.timedelta(minutes=10),
            now=NOW + dt.timedelta(minutes=4),
        ).outcome
        == "limited"
    )


def test_the_first_consent_is_kept_and_later_ones_appended(engine: Engine) -> None:
    first = subscribers.sign_up(engine, "ann@example.org", consent=CONSENT, name="Ann", now=NOW)
    assert first.confirmation_token
    later = NOW + dt.timedelta(hours=2)
    other = Consent(at=later, ip="198.51.100.9", user_agent="curl", form="web:/subscribe")
    second = subscribers.sign_up(engine, "ann@example.org", consent=other, name="Mallory", now=later)
    assert second.confirmation_token and second.subscriber is not None
    assert (second.subscriber.consent, second.subscriber.name) == (CONSENT, "Ann")
    history = subscribers.consent_history(engine, second.subscriber.id)
    assert [(c.at, c.ip, c.name, c.confirmed_at) for c in history] == [
        (NOW, CONSENT.ip, "Ann", None),
        (later, "198.51.100.9", "Mallory", None),
    ]
    confirmed = subscribers.confirm(engine, second.confirmation_token, now=later)
    assert (confirmed.consent, confirmed.name) == (CONSENT, "Mallory")
    assert [c.confirmed_at for c in subscribers.consent_history(engine, confirmed.id)] == [None, later]


def test_erasing_a_subscriber_erases_their_consents(engine: Engine) -> None:
    signed = subscribers.sign_up(engine, "ann@example.org", consent=CONSENT, now=NOW)
    assert signed.confirmation_token and signed.subscriber is not None
    subscribers.confirm(engine, signed.confirmation_token, now=NOW)
    assert len(subscribers.consent_history(engine, signed.subscriber.id)) == 1
    subscribers.remove(engine, "ann@example.org")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(consents)).scalar_one() == 0


def test_migration_0005_copies_the_consents_already_recorded(blank_database_url: str) -> None:
    from newsletter.store import db

    engine = db.create_store_engine(blank_database_url)
    try:
        db.upgrade(engine, "0004")
        with engine.begin() as conn:  # rows as the code before 0005 wrote them
            conn.execute(
                table.insert().values(
                    email="ann@example.org",
                    email_key="ann@example.org",
                    name="Ann",
                    status="active",
                    created_at=NOW,
                    updated_at=NOW,
                    confirmed_at=NOW,
                    source="web",
                    attributes={},
                    token="t" * 40,
                    consent_at=CONSENT.at,
                    consent_ip=CONSENT.ip,
                    consent_user_agent=CONSENT.user_agent,
                    consent_form=CONSENT.form,
                )
            )
            conn.execute(
                table.insert().values(
                    email="bob@example.org",
                    email_key="bob@example.org",
                    name="",
                    status="active",
                    created_at=NOW,
                    updated_at=NOW,
                    source="import",
                    attributes={},
                    token="u" * 40,
                )
            )
        db.upgrade(engine)
        ann = subscribers.get(engine, "ann@example.org")
        bob = subscribers.get(engine, "bob@example.org")
        assert ann is not None and bob is not None
        [record] = subscribers.consent_history(engine, ann.id)
        assert (record.at, record.ip, record.user_agent, record.form, record.confirmed_at) == (
            NOW,
            CONSENT.ip,
            CONSENT.user_agent,
            CONSENT.form,
            NOW,
        )
        assert subscribers.consent_history(engine, bob.id) == []
    finally:
        engine.dispose()


def test_sign_ups_for_one_address_at_the_same_moment_mail_once(engine: Engine) -> None:
    """Another request's sign-up of the address is in flight (inserted, not committed):
    this one waits for it and sends nothing, instead of a second email or a 500."""
    import threading

    from newsletter.store.db import write_transaction

    results: list[subscribers.SignUp] = []
    with write_transaction(engine) as conn:
        conn.execute(
            table.insert().values(
                email="race@example.org",
                email_key="race@example.org",
                name="",
                status="pending",
                created_at=NOW,
                updated_at=NOW,
                source="web",
                attributes={},
                token="r" * 40,
                confirmation_hash="h" * 64,
                confirmation_expires_at=NOW + subscribers.CONFIRMATION_TTL,
            )
        )
        row_id = conn.execute(select(table.c.id)).scalar_one()
        conn.execute(
            consents.insert().values(
                subscriber_id=row_id, at=NOW, name="", expires_at=NOW + subscribers.CONFIRMATION_TTL
            )
        )
        racer = threading.Thread(
            target=lambda: results.append(subscribers.sign_up(engine, "race@example.org", consent=CONSENT, now=NOW))
        )
        racer.start()
        racer.join(0.5)  # on SQLite it waits for the write lock; on PostgreSQL for the row
    racer.join(15)
    [result] = results
    assert (result.confirmation_token, result.outcome) == (None, "limited")
    assert subscribers.count(engine) == 1
