"""Addresses and cells: the unique key, the fast path's agreement with email-validator,
formula and header-injection checks."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.errors import SubscriberError
from newsletter.store.addresses import cell_problem, check_address, defuse_cell, is_formula, suppression_hash


@pytest.mark.parametrize(
    ("given_", "key"),
    [
        ("Ada@Example.com", "ada@example.com"),
        ("  ada@example.com ", "ada@example.com"),
        ("bob@münchen.example", "bob@xn--mnchen-3ya.example"),
        ("BOB@MÜNCHEN.EXAMPLE", "bob@xn--mnchen-3ya.example"),
        ("bob@xn--mnchen-3ya.example", "bob@xn--mnchen-3ya.example"),
        ("José@example.es", "josé@example.es"),
        ("o'brien+news@example.co.uk", "o'brien+news@example.co.uk"),
    ],
)
def test_email_key(given_: str, key: str) -> None:
    assert check_address(given_).key == key


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain",
        "a@b",
        "a@@example.org",
        "a..b@example.org",
        "a@example.test",
        "a@-x.example.org",
        "a@example.org\nBcc: b@example.org",
        "a@" + "x" * 250 + ".org",
    ],
)
def test_invalid_addresses(bad: str) -> None:
    with pytest.raises(SubscriberError):
        check_address(bad)


LOCAL = st.text(alphabet="abcXYZ019_+-.", min_size=1, max_size=70)
LABEL = st.text(alphabet="abz09-", min_size=1, max_size=64)
DOMAIN = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(LABEL, min_size=1, max_size=3),
    st.sampled_from(["org", "com", "test", "local", "x", "Example", "co1"]),
)


@settings(max_examples=400, deadline=None)
@given(local=LOCAL, domain=DOMAIN)
def test_fast_path_agrees_with_email_validator(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        with pytest.raises(SubscriberError):
            check_address(address)
        return
    assert check_address(address).key == f"{valid.local_part.lower()}@{valid.ascii_domain.lower()}"


@pytest.mark.parametrize("cell", ["=1", "+a", "-a", "@a", " =1", "\t1", "\r1", "  @SUM(1)"])
def test_formulas(cell: str) -> None:
    assert is_formula(cell)
    assert defuse_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["Ann", "-12.5", "+44", "a=b", "", "ann@example.org"])
def test_not_formulas(cell: str) -> None:
    assert not is_formula(cell)


def test_plain_numbers_are_still_quoted_on_export() -> None:
    assert defuse_cell("-12") == "'-12"  # exported data errs on the safe side
    assert defuse_cell("Ann") == "Ann"


def test_cell_problems() -> None:
    assert cell_problem("a\nb") == "line break (header injection)"
    assert cell_problem("a\x85b") == "line break (header injection)"
    assert cell_problem("a\x00b") == "control character"
    assert cell_problem("tab\tinside") is None


def test_suppression_hash_is_of_the_key() -> None:
    assert suppression_hash(check_address("Ann@Example.org").key) == suppression_hash("ann@example.org")
    assert "ann" not in suppression_hash("ann@example.org")
