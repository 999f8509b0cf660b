#!/usr/bin/env python3
"""Generate bambid's shipped audio library, ``web/static/audio/``.

Every sound is made here, from ffmpeg's lavfi sources (``sine``-like expressions
in ``aevalsrc``, seeded ``anoisesrc``) and espeak-ng; nothing is recorded or
copied. Groups (see ``web/static/audio/README.md`` for the list of files):

``effects/``     short cues (< 5 s): chime, soft click, whoosh, breath in / out
``background/``  40 s seamless loops, mono, low bitrate: brown noise, rain, ocean, drone
``triggers/``    one cue per trigger of ``etc/triggers.json`` that has an ``"audio"``
                 field: espeak-ng speaking the trigger's name over a soft chime
                 (``FALLBACK_TRIGGERS`` while there is no catalog)
``voices/``      a short greeting per espeak-ng voice (``VOICE_PREVIEWS``)

Usage::

    python tools/make_sounds.py                 # everything, into web/static/audio/
    python tools/make_sounds.py effects triggers
    python tools/make_sounds.py --check         # regenerate in a temporary directory and
                                                # compare byte for byte (exit 1 on a difference)

Contract: the output is deterministic. The same ffmpeg and espeak-ng versions
produce byte-identical files (fixed noise seeds, expression-driven sources,
``-fflags +bitexact -flags +bitexact -map_metadata -1``, no ID3 tag); other
versions may encode differently but sound the same. Loudness is set by measuring
each sound (``astats``) and applying one fixed gain, never by an adaptive filter,
so the loops stay seamless. Catalog errors (a malformed file, an entry without a
name, an audio path outside the library) stop the script with a message naming
the entry.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "web" / "static" / "audio"
CATALOG = ROOT / "etc" / "triggers.json"
GROUPS = ("effects", "background", "triggers", "voices")

FFMPEG = os.environ.get("FFMPEG", "ffmpeg")
ESPEAK = os.environ.get("ESPEAK", "espeak-ng")

#: Used while ``etc/triggers.json`` does not exist: (name, file under triggers/).
FALLBACK_TRIGGERS: tuple[tuple[str, str], ...] = (
    ("Deep Breath", "deep-breath.mp3"),
    ("Let Go", "let-go.mp3"),
    ("Soft Shoulders", "soft-shoulders.mp3"),
    ("Sit Tall", "sit-tall.mp3"),
    ("Focus Now", "focus-now.mp3"),
    ("Box Breathing", "box-breathing.mp3"),
    ("Slow Exhale", "slow-exhale.mp3"),
    ("Calm Mind", "calm-mind.mp3"),
    ("Eyes Soft", "eyes-soft.mp3"),
    ("Jaw Relax", "jaw-relax.mp3"),
)

#: espeak-ng voice id (as the voice pipeline names it) → the preview sentence.
VOICE_PREVIEWS: dict[str, str] = {
    "en-us": "Hello. Let's take a slow breath together.",
    "en-gb": "Hello. Let's take a slow breath together.",
    "fr-fr": "Bonjour. Prenons ensemble une lente respiration.",
    "de": "Hallo. Lass uns gemeinsam langsam durchatmen.",
    "es": "Hola. Respiremos juntos, despacio.",
}

#: The voice and pace of the trigger cues.
TRIGGER_VOICE = "en-us"
TRIGGER_WPM = 130
TRIGGER_PITCH = 40

#: Loop length and the crossfade that joins a loop's end to its start.
LOOP_SECONDS = 40
LOOP_FADE_SECONDS = 4

#: A file name in the library: no directories, no dot files, no traversal.
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SoundError(Exception):
    """A tool failed or the catalog is unusable; the message says which."""


@dataclass(frozen=True)
class Encoding:
    """How a group is encoded: mono MP3 (libmp3lame, CBR) at this rate."""

    rate: int
    bitrate: str


EFFECT = Encoding(44100, "48k")
SPEECH = Encoding(22050, "40k")
LOOP = Encoding(22050, "32k")


@dataclass(frozen=True)
class Level:
    """The loudness a sound is brought to: its peak at ``peak_db`` dBFS, or, with
    ``rms_db``, its RMS there (never letting the peak pass ``peak_db``)."""

    peak_db: float
    rms_db: float | None = None


@dataclass(frozen=True)
class TriggerSound:
    """One trigger cue: the catalog entry's name and its path in the library."""

    name: str
    path: str


# --- the catalog -----------------------------------------------------------------


def library_path(audio: str) -> str:
    """The library-relative path (``triggers/x.mp3``) of a catalog ``"audio"`` value.

    A bare file name lives in ``triggers/``; a value with a directory is relative to
    the library (leading ``/static/audio/``, ``static/audio/`` or ``audio/`` removed).
    Raises ``ValueError`` for anything that could leave the library.
    """
    value = audio.strip()
    for prefix in ("/static/audio/", "static/audio/", "/audio/", "audio/"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    parts = PurePosixPath(value).parts
    if not parts or not all(_SAFE_PART.match(part) for part in parts):
        raise ValueError(f"not a file name in the audio library: {audio!r}")
    if len(parts) == 1:
        parts = ("triggers", *parts)
    return "/".join(parts)


def load_catalog(catalog: Path) -> list[TriggerSound]:
    """The entries of ``catalog`` that have an ``"audio"`` field.

    The file is a JSON list of entries or an object with a ``"triggers"`` list; an
    entry is an object with a ``"name"`` and an optional ``"audio"``. Raises
    ``SoundError`` naming the entry at fault.
    """
    try:
        document = json.loads(catalog.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SoundError(f"{catalog}: {error}") from error
    entries = document.get("triggers") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise SoundError(f"{catalog}: expected a list of triggers")
    sounds: list[TriggerSound] = []
    for index, entry in enumerate(entries):
        where = f"{catalog}: triggers[{index}]"
        if not isinstance(entry, dict):
            raise SoundError(f"{where}: not an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SoundError(f"{where}: no name")
        audio = entry.get("audio")
        if audio is None:
            continue
        if not isinstance(audio, str):
            raise SoundError(f"{where} ({name}): audio is not a string")
        try:
            sounds.append(TriggerSound(name.strip(), library_path(audio)))
        except ValueError as error:
            raise SoundError(f"{where} ({name}): {error}") from error
    return sounds


def trigger_sounds(catalog: Path = CATALOG) -> list[TriggerSound]:
    """The catalog's trigger sounds, or ``FALLBACK_TRIGGERS`` when it does not exist."""
    if catalog.exists():
        return load_catalog(catalog)
    return [TriggerSound(name, f"triggers/{file}") for name, file in FALLBACK_TRIGGERS]


# --- ffmpeg --------------------------------------------------------------------------


def run(command: Sequence[str]) -> str:
    """Run a tool; its stderr (ffmpeg's log) is returned. Raises ``SoundError``."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise SoundError(f"{command[0]}: {error}") from error
    if done.returncode != 0:
        raise SoundError(f"{' '.join(command)}\n{done.stderr.strip()}")
    return done.stderr


def measure(path: Path) -> tuple[float, float]:
    """(peak dBFS, RMS dBFS) of a mono audio file, from ffmpeg's ``astats``."""
    log = run(
        [FFMPEG, "-nostdin", "-hide_banner", "-i", str(path), "-af", "astats", "-f", "null", "-"]
    )
    overall = log.rsplit("Overall", 1)[-1]
    peak = re.search(r"Peak level dB:\s*(-?[\d.]+|-inf)", overall)
    rms = re.search(r"RMS level dB:\s*(-?[\d.]+|-inf)", overall)
    if peak is None or rms is None or "inf" in peak.group(1):
        raise SoundError(f"{path}: silent or unmeasurable")
    return float(peak.group(1)), float(rms.group(1))


def render(
    out: Path,
    graph: str,
    encoding: Encoding,
    level: Level,
    inputs: Iterable[Path] = (),
) -> None:
    """Run the filter ``graph`` (its output labelled ``[out]``) and write ``out``: the
    result is rendered to 32-bit float, measured, brought to ``level`` with one gain
    and encoded. ``out`` is replaced atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="make_sounds.") as scratch:
        raw = Path(scratch) / "raw.wav"
        command = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        for path in inputs:
            command += ["-i", str(path)]
        command += ["-filter_complex", graph, "-map", "[out]", "-ac", "1"]
        command += ["-ar", str(encoding.rate), "-c:a", "pcm_f32le", str(raw)]
        run(command)
        peak, rms = measure(raw)
        gain = level.peak_db - peak
        if level.rms_db is not None:
            gain = min(gain, level.rms_db - rms)
        encoded = out.with_name(f".{out.name}.tmp")
        command = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        command += ["-fflags", "+bitexact", "-i", str(raw)]
        command += ["-af", f"volume={gain:.2f}dB", "-ac", "1", "-ar", str(encoding.rate)]
        command += ["-c:a", "libmp3lame", "-b:a", encoding.bitrate, "-flags", "+bitexact"]
        command += ["-fflags", "+bitexact", "-map_metadata", "-1", "-id3v2_version", "0"]
        command += ["-f", "mp3", str(encoded)]
        run(command)
        encoded.replace(out)


def speak(text: str, voice: str, wpm: int, pitch: int, out: Path) -> float:
    """espeak-ng says ``text`` into the WAV file ``out``; its duration in seconds."""
    run([ESPEAK, "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(out), text])
    with wave.open(str(out), "rb") as clip:
        return clip.getnframes() / clip.getframerate()


# --- building blocks (filter-graph text) ---------------------------------------------


def source(expression: str, seconds: float, rate: int, label: str) -> str:
    """An ``aevalsrc`` of ``expression`` (in ``t``) lasting ``seconds``."""
    return f"aevalsrc=exprs='{expression}':s={rate}:d={seconds}[{label}]"


def noise(color: str, seed: int, seconds: float, rate: int, label: str) -> str:
    """Seeded ``anoisesrc`` noise (white, pink, brown...) lasting ``seconds``."""
    return f"anoisesrc=c={color}:seed={seed}:a=0.5:r={rate}:d={seconds}[{label}]"


def seamless(inp: str, seconds: float, fade: float, rate: int, label: str) -> str:
    """A loop of exactly ``seconds`` from ``inp``, which must last ``seconds + fade``.

    The head ``[0, fade)`` is crossfaded (equal power) under the tail
    ``[seconds, seconds + fade)`` and the result starts at ``fade``: its last sample
    flows into its first, so the loop has no seam.
    """
    total, overlap = round(seconds * rate), round(fade * rate)
    return (
        f"[{inp}]asplit[{label}_a][{label}_b];"
        f"[{label}_a]atrim=start_sample={overlap}:end_sample={total + overlap},"
        f"asetpts=PTS-STARTPTS[{label}_body];"
        f"[{label}_b]atrim=end_sample={overlap},asetpts=PTS-STARTPTS[{label}_head];"
        f"[{label}_body][{label}_head]acrossfade=ns={overlap}:c1=qsin:c2=qsin[{label}]"
    )


def seeded(seed0: int, seed1: int, expression: str) -> str:
    """``expression`` with its ``random(0)`` and ``random(1)`` generators seeded once
    (variable 9 marks that the seeds are set), so two sources differ."""
    return f"if(ld(9),0,st(9,1)+st(0,{seed0})+st(1,{seed1}));{expression}"


def sweep(filter_name: str, points: Sequence[tuple[float, float]], steps: int = 60) -> str:
    """``asendcmd`` commands moving ``filter_name``'s ``f`` through ``points``
    ((time, Hz) pairs), interpolated geometrically in ``steps`` steps."""
    commands: list[str] = []
    for (t0, f0), (t1, f1) in zip(points, points[1:], strict=False):
        for step in range(steps):
            fraction = step / steps
            at = t0 + (t1 - t0) * fraction
            hz = f0 * (f1 / f0) ** fraction
            commands.append(f"{at:.3f} {filter_name} f {hz:.1f}")
    return "asendcmd=c='" + ";".join(commands) + "'"


def bell(rate: int, seconds: float, label: str, fundamental: float = 659.25) -> str:
    """A soft bell: summed sines on bell-like partials, each decaying exponentially,
    with a 4 ms attack and a slight detuned twin of the fundamental (shimmer)."""
    partials = (
        (1.0, 1.0, 1.6),
        (1.0021, 0.5, 1.4),
        (2.0, 0.3, 0.9),
        (2.76, 0.22, 0.6),
        (5.4, 0.07, 0.3),
        (8.93, 0.025, 0.15),
    )
    terms = "+".join(
        f"{amp}*sin(2*PI*{fundamental * ratio:.3f}*t)*exp(-t/{decay})"
        for ratio, amp, decay in partials
    )
    return source(f"0.3*(1-exp(-t/0.004))*({terms})", seconds, rate, label)


# --- the groups ------------------------------------------------------------------------


def make_effects(out: Path) -> list[Path]:
    """``effects/``: chime, soft-click, whoosh, breath-in, breath-out."""
    rate, made = EFFECT.rate, []
    target = out / "effects"

    path = target / "chime.mp3"
    render(path, bell(rate, 3.5, "b") + ";[b]afade=t=out:st=3:d=0.5[out]", EFFECT, Level(-4))
    made.append(path)

    path = target / "soft-click.mp3"
    click = "sin(2*PI*1700*t)*exp(-t/0.006)+0.6*sin(2*PI*820*t)*exp(-t/0.014)"
    graph = source(f"(1-exp(-t/0.0005))*({click})", 0.12, rate, "c") + ";[c]lowpass=f=5000[out]"
    render(path, graph, EFFECT, Level(-10))
    made.append(path)

    path = target / "whoosh.mp3"
    graph = (
        noise("pink", 11, 1.6, rate, "n")
        + ";"
        + source("pow(sin(PI*t/1.6),3)", 1.6, rate, "e")
        + ";[n]"
        + sweep("bandpass", ((0, 250), (0.8, 2400), (1.6, 500)))
        + ",bandpass=f=250:width_type=q:w=2[f];[f][e]amultiply[out]"
    )
    render(path, graph, EFFECT, Level(-8))
    made.append(path)

    path = target / "breath-in.mp3"
    # A swell: the envelope rises over 2.6 s and falls in 0.4 s; the band rises too.
    envelope = "if(lt(t,2.6),pow(sin(PI/2*t/2.6),2),pow(cos(PI/2*(t-2.6)/0.4),2))"
    graph = (
        noise("pink", 12, 3.0, rate, "n")
        + ";"
        + source(envelope, 3.0, rate, "e")
        + ";[n]highpass=f=250,"
        + sweep("lowpass", ((0, 900), (2.6, 2600), (3.0, 2600)))
        + ",lowpass=f=900[f];[f][e]amultiply[out]"
    )
    render(path, graph, EFFECT, Level(-12))
    made.append(path)

    path = target / "breath-out.mp3"
    envelope = "if(lt(t,0.3),pow(sin(PI/2*t/0.3),2),pow(cos(PI/2*(t-0.3)/3.7),3))"
    graph = (
        noise("pink", 13, 4.0, rate, "n")
        + ";"
        + source(envelope, 4.0, rate, "e")
        + ";[n]highpass=f=180,"
        + sweep("lowpass", ((0, 2200), (4.0, 600)))
        + ",lowpass=f=2200[f];[f][e]amultiply[out]"
    )
    render(path, graph, EFFECT, Level(-12))
    made.append(path)
    return made


def make_background(out: Path) -> list[Path]:
    """``background/``: brown-noise, rain, ocean, drone; each exactly ``LOOP_SECONDS``
    long and seamless (modulations have periods that divide the loop length)."""
    rate, seconds, fade = LOOP.rate, LOOP_SECONDS, LOOP_FADE_SECONDS
    long = seconds + fade
    target, made = out / "background", []

    path = target / "brown-noise.mp3"
    graph = (
        noise("brown", 21, long, rate, "n")
        + ";[n]highpass=f=35,lowpass=f=2500[f];"
        + seamless("f", seconds, fade, rate, "out")
    )
    render(path, graph, LOOP, Level(-3, rms_db=-24))
    made.append(path)

    path = target / "rain.mp3"
    # A steady hiss, a dense patter and sparse bigger drops (random impulses through
    # resonant band-passes), swelling slowly with a 20 s period.
    patter = seeded(31, 32, "if(lt(random(0),0.004),random(1)-0.5,0)")
    drops = seeded(33, 34, "if(lt(random(0),0.00025),random(1)-0.5,0)")
    graph = (
        noise("pink", 22, long, rate, "hiss")
        + ";"
        + source(patter, long, rate, "p")
        + ";"
        + source(drops, long, rate, "d")
        + ";[hiss]highpass=f=500,lowpass=f=6000,volume=0.5[h];"
        + "[p]bandpass=f=3200:width_type=q:w=3,volume=4[pf];"
        + "[d]bandpass=f=1400:width_type=q:w=6,volume=10[df];"
        + "[h][pf][df]amix=inputs=3:normalize=0[mix];"
        + seamless("mix", seconds, fade, rate, "bed")
        + ";"
        + source("0.85+0.15*sin(2*PI*t/20)", seconds, rate, "e")
        + ";[bed][e]amultiply[out]"
    )
    render(path, graph, LOOP, Level(-3, rms_db=-26))
    made.append(path)

    path = target / "ocean.mp3"
    # Waves: a low bed and a brighter wash, both following swells of 8 s and 10 s
    # (both divide 40 s), the wash only near their crests.
    swell = "(0.6*(0.5-0.5*cos(2*PI*t/8))+0.4*(0.5-0.5*cos(2*PI*t/10)))"
    graph = (
        noise("brown", 23, long, rate, "lo")
        + ";"
        + noise("pink", 24, long, rate, "hi")
        + ";[lo]highpass=f=40,lowpass=f=700[lof];"
        + seamless("lof", seconds, fade, rate, "low")
        + ";[hi]highpass=f=900,lowpass=f=5000[hif];"
        + seamless("hif", seconds, fade, rate, "high")
        + ";"
        + source(f"0.15+0.85*pow({swell},2)", seconds, rate, "el")
        + ";"
        + source(f"0.35*pow({swell},4)", seconds, rate, "eh")
        + ";[low][el]amultiply[a];[high][eh]amultiply[b];"
        + "[a][b]amix=inputs=2:normalize=0[out]"
    )
    render(path, graph, LOOP, Level(-3, rms_db=-25))
    made.append(path)

    path = target / "drone.mp3"
    # A just-intonation A major chord (110:165:220:275 Hz) with slightly detuned
    # twins; every frequency times 40 s is a whole number, so the loop is exact.
    voices = (
        (110.0, 1.0, 20, 0.0),
        (110.05, 0.7, 40, 1.0),
        (165.0, 0.55, 10, 2.0),
        (165.05, 0.35, 20, 3.0),
        (220.0, 0.35, 8, 4.0),
        (275.025, 0.18, 40, 5.0),
        (55.0, 0.5, 20, 0.5),
    )
    terms = "+".join(
        f"{amp}*(0.8+0.2*sin(2*PI*t/{period}+{phase}))*sin(2*PI*{hz}*t)"
        for hz, amp, period, phase in voices
    )
    # Rendered twice over and the second period kept: the low-pass is then in its
    # steady state at the loop point.
    graph = (
        source(f"0.15*({terms})", 2 * seconds, rate, "d")
        + f";[d]lowpass=f=1400,atrim=start_sample={seconds * rate},asetpts=PTS-STARTPTS[out]"
    )
    render(path, graph, LOOP, Level(-3, rms_db=-24))
    made.append(path)
    return made


def make_triggers(out: Path, sounds: Sequence[TriggerSound]) -> list[Path]:
    """``triggers/``: per sound, espeak-ng saying the name (softened with a low-pass
    and a little room echo), entering 0.35 s after a quiet chime."""
    rate, made = SPEECH.rate, []
    with tempfile.TemporaryDirectory(prefix="make_sounds.") as scratch:
        for sound in sounds:
            if not sound.path.endswith(".mp3"):
                print(f"skipped {sound.name}: {sound.path} is not an .mp3", file=sys.stderr)
                continue
            speech = Path(scratch) / "speech.wav"
            spoken = speak(f"{sound.name}.", TRIGGER_VOICE, TRIGGER_WPM, TRIGGER_PITCH, speech)
            seconds = round(max(3.0, 0.35 + spoken + 0.8), 2)
            graph = (
                bell(rate, seconds, "b")
                + ";[b]volume=0.45[chime];"
                + f"[0:a]aresample={rate},highpass=f=90,lowpass=f=5000,"
                + "aecho=0.9:0.6:45|90:0.22|0.12,adelay=350,"
                + f"apad,atrim=end={seconds}[voice];"
                + "[chime][voice]amix=inputs=2:normalize=0:duration=first,"
                + f"afade=t=out:st={seconds - 0.4}:d=0.4[out]"
            )
            path = out / sound.path
            render(path, graph, SPEECH, Level(-3), inputs=[speech])
            made.append(path)
    return made


def make_voices(out: Path) -> list[Path]:
    """``voices/<voice>.mp3``: each preview sentence in its voice, with 0.2 s of
    silence either side."""
    made = []
    with tempfile.TemporaryDirectory(prefix="make_sounds.") as scratch:
        for voice, text in VOICE_PREVIEWS.items():
            speech = Path(scratch) / "speech.wav"
            speak(text, voice, 150, 45, speech)
            graph = f"[0:a]aresample={SPEECH.rate},adelay=200,apad=pad_dur=0.2[out]"
            path = out / "voices" / f"{voice}.mp3"
            render(path, graph, SPEECH, Level(-3), inputs=[speech])
            made.append(path)
    return made


def make(out: Path, groups: Iterable[str], catalog: Path = CATALOG) -> list[Path]:
    """Generate ``groups`` into the library directory ``out``; the files written."""
    made: list[Path] = []
    for group in groups:
        if group == "effects":
            made += make_effects(out)
        elif group == "background":
            made += make_background(out)
        elif group == "triggers":
            made += make_triggers(out, trigger_sounds(catalog))
        elif group == "voices":
            made += make_voices(out)
        else:
            raise SoundError(f"unknown group {group!r} (one of {', '.join(GROUPS)})")
    return made


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", default=list(GROUPS), help="default: all")
    parser.add_argument("--out", type=Path, default=LIBRARY, help="default: %(default)s")
    parser.add_argument("--catalog", type=Path, default=CATALOG, help="default: %(default)s")
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and compare with --out",
    )
    options = parser.parse_args(argv)
    for tool in (FFMPEG, ESPEAK):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (apt-get install ffmpeg espeak-ng)", file=sys.stderr)
            return 2
    try:
        if not options.check:
            made = make(options.out, options.groups, options.catalog)
            total = sum(path.stat().st_size for path in made)
            print(f"{len(made)} files, {total / 1024:.0f} KiB, in {options.out}")
            return 0
        with tempfile.TemporaryDirectory(prefix="make_sounds.check.") as scratch:
            made = make(Path(scratch), options.groups, options.catalog)
            differ = [
                path.relative_to(scratch).as_posix()
                for path in made
                if not (options.out / path.relative_to(scratch)).exists()
                or (options.out / path.relative_to(scratch)).read_bytes() != path.read_bytes()
            ]
    except SoundError as error:
        print(f"make_sounds: {error}", file=sys.stderr)
        return 1
    for name in differ:
        print(f"differs: {name}")
    print(f"{len(made) - len(differ)} of {len(made)} files identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
