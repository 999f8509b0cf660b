"""Registers ``twist bambid`` / ``twistd bambid``. The app module is named as a
string so that listing plugins does not import bambid."""

from twisted.application.service import ServiceMaker

bambid = ServiceMaker(
    "bambid",
    "bambid.tap",
    "Self-hosted real-time AI companion chat server",
    "bambid",
)
