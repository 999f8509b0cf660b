"""``GET``/``PATCH /api/me/preferences`` and the WebSocket ``preferences.get``
over a real loopback port: the defaults, a change of each section stored and
sent to every connection of the person, refusals naming the field with
nothing stored, the level gates, and a new sign-in on another device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from bambid.auth.sessions import SESSION_COOKIE
from tests.chatsupport import SETTINGS_DEFAULTS, connect, next_of
from tests.conftest import Running
from tests.test_auth import PASSWORD, Browser, Response, service

PREFS = "/api/me/preferences"
#: XP of level 4 (spirals) and of level 7 (binaural, without its sequences).
SPIRALS_XP = 7000
BINAURAL_XP = 112000


def defaults(running: Running) -> dict[str, Any]:
    config = running.service.config.voice
    return {
        "voice": {
            "enabled": config.speak_replies,
            "voice": running.service.voice.preferences.default_voice,
            "speed": config.speed,
            "volume": 1.0,
        },
        "notifications": {"mentions": True, "sound": True, "level_up": True},
        "privacy": {"analytics": None, "decided_at": None},
        "settings": SETTINGS_DEFAULTS,
    }


async def patch(browser: Browser, body: Any, **kw: Any) -> Response:
    return await browser.request("PATCH", PREFS, json=body, **kw)


async def signed_up(running: Running, name: str, xp: int = 0) -> Browser:
    browser = Browser(running.http)
    await browser.register(name)
    if xp:
        await running.service.storage.add_xp(name, xp)
    return browser


def token_of(browser: Browser) -> str:
    token = browser.cookie(SESSION_COOKIE)
    assert token
    return token


@pytest_twisted.ensureDeferred
async def test_defaults_for_accounts_and_guests(running: Running) -> None:
    nobody = Browser(running.http)
    response = await nobody.get(PREFS)
    assert (response.code, response.json()["error"]) == (401, "unauthenticated")
    assert (await patch(nobody, {"notifications": {"sound": False}})).code == 401

    ada = await signed_up(running, "Ada")
    response = await ada.get(PREFS)
    assert response.code == 200
    assert response.header("cache-control") == "no-store"
    assert response.json() == defaults(running)

    guest = Browser(running.http)
    assert (await guest.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    assert (await guest.get(PREFS)).json() == defaults(running)
    refused = await patch(guest, {"notifications": {"sound": False}})
    assert (refused.code, refused.json()["error"]) == (403, "forbidden")
    assert "sign up" in refused.json()["message"]


@pytest_twisted.ensureDeferred
async def test_each_section_is_stored_and_sent_to_every_connection(running: Running) -> None:
    storage = running.service.storage
    ada = await signed_up(running, "Ada", xp=SPIRALS_XP)
    tab1, _ = await connect(running, token_of(ada))
    tab2, _ = await connect(running, token_of(ada))
    tabs = (tab1, tab2)

    response = await patch(ada, {"notifications": {"sound": False}})
    assert response.code == 200
    notifications = {"mentions": True, "sound": False, "level_up": True}
    assert response.json()["notifications"] == notifications
    for tab in tabs:
        update = await next_of(tab, "preferences.update")
        assert update == {"type": "preferences.update", "notifications": notifications}

    before = running.service.reactor.seconds()
    response = await patch(ada, {"privacy": {"analytics": True}})
    privacy = response.json()["privacy"]
    assert privacy["analytics"] is True and privacy["decided_at"] >= before
    for tab in tabs:
        update = await next_of(tab, "preferences.update")
        assert update == {"type": "preferences.update", "privacy": privacy}

    response = await patch(ada, {"voice": {"volume": 0.3, "enabled": False}})
    voice = response.json()["voice"]
    assert (voice["volume"], voice["enabled"]) == (0.3, False)
    for tab in tabs:
        frame = await next_of(tab, "voice.prefs")
        assert (frame["volume"], frame["enabled"]) == (0.3, False)

    response = await patch(ada, {"settings": {"spirals": {"enabled": True, "spiral1Width": 7}}})
    spirals = {**SETTINGS_DEFAULTS["spirals"], "enabled": True, "spiral1Width": 7}
    assert response.json()["settings"]["spirals"] == spirals
    for tab in tabs:
        frame = await next_of(tab, "settings.state")
        assert frame == {"type": "settings.state", "section": "spirals", "values": spirals}

    # Stored: only what was chosen, each under its own key.
    profile = await storage.get_profile("Ada")
    assert profile is not None
    preferences = profile.preferences
    assert preferences["notifications"] == {"sound": False}
    assert preferences["privacy"] == privacy
    assert preferences["voice"] == {"volume": 0.3, "enabled": False}
    assert preferences["settings"] == {"spirals": {"enabled": True, "spiral1Width": 7}}

    # The WebSocket reads the same object.
    whole = (await ada.get(PREFS)).json()
    state = await tab1.request({"type": "preferences.get", "id": "p"})
    assert state == {"type": "preferences.state", "id": "p", **whole}
    # Several sections at once.
    response = await patch(ada, {"notifications": {"mentions": False}, "voice": {"speed": 1.5}})
    assert response.json()["notifications"]["mentions"] is False
    assert response.json()["voice"]["speed"] == 1.5


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [
        ({"theme": {}}, 400, "bad_request", "theme"),
        ({"voice": True}, 400, "bad_request", "voice"),
        ({"voice": {"pitch": 2}}, 400, "bad_request", "voice.pitch"),
        ({"voice": {"volume": 1.5}}, 422, "invalid", "voice.volume"),
        ({"voice": {"speed": "fast"}}, 422, "invalid", "voice.speed"),
        ({"voice": {"voice": "zz_nobody"}}, 422, "invalid", "voice.voice"),
        ({"notifications": {"sound": "off"}}, 422, "invalid", "notifications.sound"),
        ({"notifications": {"email": True}}, 400, "bad_request", "notifications.email"),
        ({"privacy": {"analytics": "yes"}}, 422, "invalid", "privacy.analytics"),
        ({"privacy": {}}, 422, "invalid", "privacy.analytics"),
        (
            {"privacy": {"analytics": True, "decided_at": 1}},
            400,
            "bad_request",
            "privacy.decided_at",
        ),
        ({"settings": {"colors": {}}}, 400, "bad_request", "settings.colors"),
        (
            {"settings": {"spirals": {"spiral1Width": 11}}},
            422,
            "invalid",
            "settings.spirals.spiral1Width",
        ),
        (
            {"settings": {"spirals": {"sparkle": True}}},
            400,
            "bad_request",
            "settings.spirals.sparkle",
        ),
        # Partly good: nothing of it is stored.
        (
            {"notifications": {"sound": False}, "voice": {"volume": -1}},
            422,
            "invalid",
            "voice.volume",
        ),
        (
            {"privacy": {"analytics": True}, "settings": {"audio": {"background": "jazz"}}},
            422,
            "invalid",
            "settings.audio.background",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refusals_name_the_field_and_store_nothing(
    tmp_path: Path, body: dict[str, Any], status: int, error: str, field: str
) -> None:
    async with service(tmp_path) as running:
        ada = await signed_up(running, "Ada", xp=BINAURAL_XP)
        response = await patch(ada, body)
        assert (response.code, response.json()["error"], response.json()["field"]) == (
            status,
            error,
            field,
        ), response.json()
        assert response.json()["message"]
        assert (await ada.get(PREFS)).json() == defaults(running)
        profile = await running.service.storage.get_profile("Ada")
        assert profile is not None and profile.preferences == {}


@pytest_twisted.ensureDeferred
async def test_requests_that_are_not_patches(running: Running) -> None:
    ada = await signed_up(running, "Ada")
    empty = await patch(ada, {})
    assert (empty.code, empty.json()["error"]) == (400, "bad_request")
    text = await ada.request("PATCH", PREFS, data=b"sound=off")
    assert (text.code, text.json()["error"]) == (415, "unsupported_media_type")
    forged = await patch(
        ada, {"notifications": {"sound": False}}, headers={"Origin": "https://evil.example"}
    )
    assert (forged.code, forged.json()["error"]) == (403, "csrf_failed")
    assert (await ada.get(PREFS)).json()["notifications"]["sound"] is True


@pytest_twisted.ensureDeferred
async def test_gated_settings_are_refused(running: Running) -> None:
    storage = running.service.storage
    ada = await signed_up(running, "Ada")
    response = await patch(ada, {"settings": {"spirals": {"enabled": True}}})
    assert response.code == 403
    assert response.json() == {
        "error": "level_required",
        "message": "Spirals unlock at level 4",
        "feature": "spirals",
        "level": 4,
        "field": "settings.spirals",
    }
    await storage.add_xp("Ada", BINAURAL_XP)  # binaural, not its sequences
    response = await patch(ada, {"settings": {"binaural": {"beat": 6, "pattern": "descent"}}})
    assert response.code == 403
    assert (response.json()["feature"], response.json()["field"]) == (
        "advanced_binaural",
        "settings.binaural.pattern",
    )
    profile = await storage.get_profile("Ada")
    assert profile is not None and "settings" not in profile.preferences
    response = await patch(ada, {"settings": {"binaural": {"beat": 6}}})
    assert response.json()["settings"]["binaural"]["beat"] == 6


@pytest_twisted.ensureDeferred
async def test_another_device_gets_the_stored_values(running: Running) -> None:
    phone = await signed_up(running, "Ada")
    response = await patch(
        phone,
        {
            "notifications": {"level_up": False},
            "voice": {"volume": 0.55},
            "privacy": {"analytics": False},
        },
    )
    assert response.code == 200
    chosen = response.json()

    laptop = Browser(running.http)  # another device: a fresh sign-in, a new cookie
    login = await laptop.api("/api/auth/login", {"username": "Ada", "password": PASSWORD})
    assert login.code == 200
    assert token_of(laptop) != token_of(phone)
    assert (await laptop.get(PREFS)).json() == chosen
    tab, _ = await connect(running, token_of(laptop))
    prefs = await tab.request({"type": "voice.prefs", "id": 1})
    assert prefs["volume"] == 0.55
    state = await tab.request({"type": "preferences.get", "id": 2})
    assert state["notifications"]["level_up"] is False
    assert state["privacy"]["analytics"] is False

    anonymous, _ = await connect(running)
    answer = await anonymous.request({"type": "preferences.get", "id": 3})
    assert (answer["type"], answer["code"]) == ("error", "unauthenticated")
