"""Social links: what each platform accepts and refuses, how it is stored and shown."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bambid.chat.links import LinkChecker
from bambid.models import SocialLinks
from bambid.profiles.social import (
    MAX_LENGTH,
    SOCIAL_FIELDS,
    link_label,
    social_href,
    validate_social_links,
)
from tests.xss_corpus import XSS_URLS


def clean(field: str, value: object) -> str:
    cleaned, problems = validate_social_links({field: value})
    assert problems == {}, problems
    return cleaned[field]


def problem(field: str, value: object) -> str:
    cleaned, problems = validate_social_links({field: value})
    assert cleaned == {}, cleaned
    return problems[field]


def test_the_fields_are_the_models() -> None:
    assert SOCIAL_FIELDS == tuple(f.name for f in attrs.fields(SocialLinks))


# --- twitter / X ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("@jack", "https://x.com/jack"),
        ("jack", "https://x.com/jack"),
        ("Some_Name_15chr", "https://x.com/Some_Name_15chr"),
        ("https://x.com/jack", "https://x.com/jack"),
        ("https://x.com/jack/", "https://x.com/jack"),
        ("http://twitter.com/jack", "https://x.com/jack"),
        ("https://www.twitter.com/jack?s=21&t=abc", "https://x.com/jack"),
        ("https://mobile.twitter.com/jack#top", "https://x.com/jack"),
        ("HTTPS://X.COM/jack", "https://x.com/jack"),
        ("x.com/jack", "https://x.com/jack"),
        ("  @jack  ", "https://x.com/jack"),
    ],
)
def test_twitter_accepts(value: str, stored: str) -> None:
    assert clean("twitter", value) == stored


@pytest.mark.parametrize(
    "value",
    [
        "@",
        "@sixteen_chars_xx",
        "@bad-name",
        "@bad.name",
        "@ja ck",
        "x.com",
        "https://x.com/",
        "https://x.com/jack/status/1",
        "https://x.com/home",
        "@explore",
        "https://evil.example/jack",
        "https://x.com.evil.example/jack",
        "https://evil.example@x.com/jack",
        "https://x.com:8443/jack",
        "ftp://x.com/jack",
        "javascript:alert(1)",
        "https://x.com/%6aack",
    ],
)
def test_twitter_refuses(value: str) -> None:
    assert problem("twitter", value)


# --- instagram --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("@some.one", "https://www.instagram.com/some.one/"),
        ("some_one", "https://www.instagram.com/some_one/"),
        ("Some.One", "https://www.instagram.com/some.one/"),
        ("https://www.instagram.com/some.one/", "https://www.instagram.com/some.one/"),
        ("https://instagram.com/some.one?igsh=abc", "https://www.instagram.com/some.one/"),
        ("http://m.instagram.com/some.one", "https://www.instagram.com/some.one/"),
        ("instagram.com/some.one", "https://www.instagram.com/some.one/"),
        ("https://instagr.am/some.one", "https://www.instagram.com/some.one/"),
        ("a" * 30, "https://www.instagram.com/" + "a" * 30 + "/"),
    ],
)
def test_instagram_accepts(value: str, stored: str) -> None:
    assert clean("instagram", value) == stored


@pytest.mark.parametrize(
    "value",
    [
        "@",
        "a" * 31,
        ".leading",
        "trailing.",
        "two..dots",
        "with-hyphen",
        "instagram.com",
        "https://www.instagram.com/p/abc123/",
        "https://www.instagram.com/explore",
        "https://www.instagram.com/",
        "https://instagram.com.evil.example/some.one",
        "https://someone@instagram.com/some.one",
        "data:text/html,hi",
    ],
)
def test_instagram_refuses(value: str) -> None:
    assert problem("instagram", value)


# --- discord ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("https://discord.gg/abcDEF12", "https://discord.gg/abcDEF12"),
        ("discord.gg/abcDEF12", "https://discord.gg/abcDEF12"),
        ("http://discord.gg/my-server/", "https://discord.gg/my-server"),
        ("https://discord.com/invite/abcDEF12", "https://discord.gg/abcDEF12"),
        ("https://www.discord.com/invite/abcDEF12?event=1", "https://discord.gg/abcDEF12"),
        ("https://discordapp.com/invite/abcDEF12", "https://discord.gg/abcDEF12"),
        ("some.user", "some.user"),
        ("@some_user", "some_user"),
        ("Some.User", "some.user"),
        ("ab", "ab"),
        ("a" * 32, "a" * 32),
    ],
)
def test_discord_accepts(value: str, stored: str) -> None:
    assert clean("discord", value) == stored


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "a" * 33,
        "two..dots",
        "with-hyphen",
        "with space",
        "mydiscordname",
        "everyone",
        "@here",
        "discord.gg",
        "https://discord.gg/",
        "https://discord.com/channels/1/2",
        "https://discord.com/invite/",
        "https://discord.com/abc",
        "https://discord.gg.evil.example/abc",
        "https://evil.example/invite/abc",
        "javascript:alert(1)",
    ],
)
def test_discord_refuses(value: str) -> None:
    assert problem("discord", value)


def test_discord_tags_are_explained() -> None:
    assert "no longer used" in problem("discord", "name#1234")


# --- reddit -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("u/some_name", "https://www.reddit.com/user/some_name"),
        ("/u/some-name", "https://www.reddit.com/user/some-name"),
        ("U/Some_Name", "https://www.reddit.com/user/Some_Name"),
        ("some_name", "https://www.reddit.com/user/some_name"),
        ("https://www.reddit.com/user/some_name", "https://www.reddit.com/user/some_name"),
        ("https://reddit.com/user/some_name/", "https://www.reddit.com/user/some_name"),
        ("https://old.reddit.com/u/some_name", "https://www.reddit.com/user/some_name"),
        ("http://np.reddit.com/user/some_name?sort=top", "https://www.reddit.com/user/some_name"),
        ("reddit.com/u/abc", "https://www.reddit.com/user/abc"),
    ],
)
def test_reddit_accepts(value: str, stored: str) -> None:
    assert clean("reddit", value) == stored


@pytest.mark.parametrize(
    "value",
    [
        "ab",
        "u/ab",
        "a" * 21,
        "u/bad.name",
        "u/",
        "reddit.com",
        "https://www.reddit.com/r/python",
        "https://www.reddit.com/user/some_name/submitted",
        "https://www.reddit.com/some_name",
        "https://reddit.com.evil.example/user/some_name",
        "vbscript:msgbox(1)",
    ],
)
def test_reddit_refuses(value: str) -> None:
    assert problem("reddit", value)


# --- custom -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("https://example.org", "https://example.org"),
        ("https://example.org/about?x=1#me", "https://example.org/about?x=1#me"),
        ("http://example.org/", "http://example.org/"),
        ("HTTPS://Example.ORG/Path", "https://example.org/Path"),
        ("example.org/about", "https://example.org/about"),
        ("example.org:8080/x", "https://example.org:8080/x"),
        ("https://sub.example.co.uk./", "https://sub.example.co.uk/"),
        ("https://пример.рф/", "https://пример.рф/"),
        ("https://example.org/" + "a" * (MAX_LENGTH - 20), "https://example.org/" + "a" * 280),
    ],
)
def test_custom_accepts(value: str, stored: str) -> None:
    assert clean("custom", value) == stored


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://example.org/" + "a" * (MAX_LENGTH - 19), "at most 300"),
        ("javascript:alert(1)", "only http and https"),
        ("ftp://example.org/", "only http and https"),
        ("mailto:someone@example.org", "only http and https"),
        ("data:text/html,hi", "only http and https"),
        ("http://127.0.0.1/", "IP address"),
        ("http://2130706433/", "IP address"),
        ("http://0x7f.1/", "IP address"),
        ("http://[::1]/", "IP address"),
        ("https://user:pw@example.org/", "user name or password"),
        ("https://example.org@evil.example/", "user name or password"),
        ("https://xn--80ak6aa92e.com/", "look-alike"),
        ("https://pаypal.com/", "look-alike"),
        ("http://localhost/", "public site"),
        ("https://%65xample.org/", "public site"),
        ("https://a_b.example.org/", "public site"),
        ("https://example.org/a b", "spaces"),
        ('https://example.org/"onmouseover=', "quotes"),
        ("https://example.org/<script>", "angle brackets"),
        ("https://example.org\\@evil.example/", "spaces, quotes"),
        ("https://", "web address"),
        ("https://example.org:99999/", "web address"),
    ],
)
def test_custom_refuses(value: str, message: str) -> None:
    assert message in problem("custom", value)


def test_custom_links_are_checked_against_the_denylist() -> None:
    checker = LinkChecker(["malware.test"])
    cleaned, problems = validate_social_links({"custom": "https://a.malware.test/"}, links=checker)
    assert cleaned == {}
    assert "list of sites" in problems["custom"]
    assert clean("custom", "https://a.malware.test/") == "https://a.malware.test/"


# --- every field ------------------------------------------------------------------------


@pytest.mark.parametrize("field", SOCIAL_FIELDS)
def test_empty_or_null_clears(field: str) -> None:
    assert validate_social_links({field: ""}) == ({field: ""}, {})
    assert validate_social_links({field: "   "}) == ({field: ""}, {})
    assert validate_social_links({field: None}) == ({field: ""}, {})


@pytest.mark.parametrize("field", SOCIAL_FIELDS)
@pytest.mark.parametrize("url", XSS_URLS)
def test_dangerous_urls_never_become_links(field: str, url: str) -> None:
    cleaned, problems = validate_social_links({field: url})
    for value in cleaned.values():
        href = social_href(field, value)
        assert href is None or href.startswith("https://")
        assert href is None or "xss.invalid" not in href or field == "custom"
        assert not any(bad in value.lower() for bad in ("javascript", "vbscript", "data:", "<"))


@pytest.mark.parametrize("field", SOCIAL_FIELDS)
def test_non_strings_and_long_values_are_refused(field: str) -> None:
    assert problem(field, 42) == "must be a string"
    assert problem(field, ["https://x.com/a"]) == "must be a string"
    assert problem(field, "a" * (MAX_LENGTH + 1)) == "must be at most 300 characters"


def test_unknown_fields_are_problems_and_others_still_checked() -> None:
    cleaned, problems = validate_social_links(
        {"twitter": "@jack", "myspace": "https://myspace.com/x", "reddit": "u/x"}
    )
    assert cleaned == {"twitter": "https://x.com/jack"}
    assert set(problems) == {"myspace", "reddit"}
    assert "unknown" in problems["myspace"]


def test_a_partial_update_merges_into_the_model() -> None:
    current = SocialLinks(twitter="https://x.com/old", reddit="https://www.reddit.com/user/abc")
    cleaned, problems = validate_social_links({"twitter": "@new", "reddit": ""})
    assert problems == {}
    assert attrs.evolve(current, **cleaned) == SocialLinks(twitter="https://x.com/new")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(SOCIAL_FIELDS),
    st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda a, b: a + b, st.sampled_from(["https://", "http://", "@", "u/", ""]), st.text()
        ),
    ),
)
def test_any_value_is_cleaned_or_refused(field: str, value: str) -> None:
    cleaned, problems = validate_social_links({field: value})
    assert (field in cleaned) != (field in problems)
    if field in cleaned:
        stored = cleaned[field]
        # Cleaning is idempotent: the stored form passes as it is.
        assert validate_social_links({field: stored}) == ({field: stored}, {})
        href = social_href(field, stored)
        assert href is None or href.startswith(("https://", "http://"))
        assert isinstance(link_label(field, stored), str)


# --- display ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "label", "href"),
    [
        ("twitter", "https://x.com/jack", "@jack", "https://x.com/jack"),
        ("instagram", "https://www.instagram.com/a.b/", "@a.b", "https://www.instagram.com/a.b/"),
        ("discord", "https://discord.gg/abc", "discord.gg/abc", "https://discord.gg/abc"),
        ("discord", "some.user", "some.user", None),
        ("reddit", "https://www.reddit.com/user/abc", "u/abc", "https://www.reddit.com/user/abc"),
        ("custom", "https://example.org/", "example.org", "https://example.org/"),
        (
            "custom",
            "https://example.org/a/?q=1#f",
            "example.org/a?q=1",
            "https://example.org/a/?q=1#f",
        ),
        ("custom", "", "", None),
    ],
)
def test_labels_and_links(field: str, value: str, label: str, href: str | None) -> None:
    assert link_label(field, value) == label
    assert social_href(field, value) == href


def test_long_custom_labels_are_shortened() -> None:
    label = link_label("custom", "https://example.org/" + "a" * 100)
    assert len(label) == 48
    assert label.startswith("example.org/aaa")
    assert label.endswith("…")


def test_values_stored_before_the_rules_are_shown_but_not_linked() -> None:
    assert link_label("twitter", "javascript:alert(1)") == "javascript:alert(1)"
    assert social_href("twitter", "javascript:alert(1)") is None
    assert social_href("custom", "http://127.0.0.1/") is None


def test_unknown_fields_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        link_label("myspace", "x")
    with pytest.raises(ValueError):
        social_href("myspace", "x")
