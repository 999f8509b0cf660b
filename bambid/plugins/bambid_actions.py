"""The built-in trigger actions, as plugins: ``audio``, ``flash``, ``xp`` and
``record`` (``bambid.triggers.actions``)."""

from bambid.triggers.actions import AUDIO, FLASH, RECORD, XP

audio = AUDIO
flash = FLASH
xp = XP
record = RECORD
