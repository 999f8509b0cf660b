"""The shipped audio library (web/static/audio/, made by tools/make_sounds.py): every
file the trigger catalog references exists; every file decodes and has a sane
length for its group; the library stays small; the generator is deterministic and
reads the catalog strictly."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "web" / "static" / "audio"
CATALOG = ROOT / "etc" / "triggers.json"
MAX_LIBRARY_BYTES = 1_500_000
#: Group → (shortest, longest) length in seconds.
DURATIONS = {
    "effects": (0.05, 5.0),
    "background": (20.0, 90.0),
    "triggers": (0.5, 6.0),
    "voices": (0.5, 10.0),
}
AUDIO_SUFFIXES = {".mp3", ".ogg", ".opus", ".wav", ".m4a"}


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_sounds", ROOT / "tools" / "make_sounds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_sounds", module)
    spec.loader.exec_module(module)
    return module


make_sounds = load_tool()


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: `make test` installs Debian's ffmpeg and espeak-ng")
    return found


def library_files() -> list[Path]:
    return sorted(p for p in LIBRARY.rglob("*") if p.is_file() and p.suffix in AUDIO_SUFFIXES)


def test_library_has_every_group() -> None:
    for group in DURATIONS:
        assert any((LIBRARY / group).glob("*.mp3")), f"{group}/ is empty"


def test_catalog_references_exist() -> None:
    """The catalog (or, until it exists, the generator's built-in list) names only
    files that are in the library."""
    sounds = make_sounds.trigger_sounds(CATALOG)
    assert sounds
    missing = [s.path for s in sounds if not (LIBRARY / s.path).is_file()]
    assert missing == []


def test_catalog_audio_in_the_real_catalog_exists() -> None:
    if not CATALOG.exists():
        pytest.skip("etc/triggers.json is not there yet")
    document = json.loads(CATALOG.read_text(encoding="utf-8"))
    entries = document["triggers"] if isinstance(document, dict) else document
    with_audio = [entry for entry in entries if entry.get("audio")]
    assert with_audio, "the shipped catalog should ship audio cues"
    for entry in with_audio:
        path = LIBRARY / make_sounds.library_path(entry["audio"])
        assert path.is_file(), f"{entry['name']}: {path} is missing"


@pytest.mark.parametrize("path", library_files(), ids=lambda p: p.relative_to(LIBRARY).as_posix())
def test_file_decodes_with_a_sane_length(path: Path) -> None:
    group = path.relative_to(LIBRARY).parts[0]
    assert group in DURATIONS, f"{path} is outside the known groups"
    probe = subprocess.run(
        [tool("ffprobe"), "-v", "error", "-select_streams", "a:0"]
        + ["-show_entries", "stream=codec_type,channels,sample_rate:format=duration"]
        + ["-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(probe.stdout)
    assert info["streams"][0]["codec_type"] == "audio"
    # Decode every frame; any decoding error is reported at the "error" level.
    decoded = subprocess.run(
        [tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-"],
        capture_output=True,
        check=False,
    )
    assert decoded.returncode == 0 and decoded.stderr == b"", decoded.stderr
    channels = int(info["streams"][0]["channels"])
    rate = int(info["streams"][0]["sample_rate"])
    seconds = len(decoded.stdout) / (4 * channels * rate)
    shortest, longest = DURATIONS[group]
    assert shortest <= seconds <= longest, f"{path.name}: {seconds:.2f} s"
    assert abs(float(info["format"]["duration"]) - seconds) < 0.5


def test_background_loops_are_whole_seconds() -> None:
    """The loops decode to exactly their nominal length (the encoder's padding is
    removed by the LAME header), which is what makes them loop without a gap."""
    for path in sorted((LIBRARY / "background").glob("*.mp3")):
        decoded = subprocess.run(
            [tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-f", "s16le", "-"],
            capture_output=True,
            check=True,
        )
        assert len(decoded.stdout) == 2 * 22050 * make_sounds.LOOP_SECONDS, path.name


def test_library_is_small() -> None:
    total = sum(p.stat().st_size for p in LIBRARY.rglob("*") if p.is_file())
    assert total < MAX_LIBRARY_BYTES, f"{total} bytes"


def test_library_holds_only_audio_and_its_readme() -> None:
    others = [
        p.relative_to(LIBRARY).as_posix()
        for p in LIBRARY.rglob("*")
        if p.is_file() and p.suffix not in AUDIO_SUFFIXES
    ]
    assert others == ["README.md"]


def test_generator_is_deterministic(tmp_path: Path) -> None:
    """Two runs of the generator (the effects group, the quickest) give the same bytes."""
    tool("ffmpeg")
    first = make_sounds.make(tmp_path / "one", ["effects"])
    second = make_sounds.make(tmp_path / "two", ["effects"])
    assert [p.name for p in first] == [p.name for p in second]
    for one, two in zip(first, second, strict=True):
        assert one.read_bytes() == two.read_bytes(), one.name


def test_generator_makes_a_cue_per_catalog_entry_with_audio(tmp_path: Path) -> None:
    tool("espeak-ng")
    catalog = tmp_path / "triggers.json"
    catalog.write_text(
        json.dumps(
            {
                "triggers": [
                    {"name": "Breathe Slowly", "audio": "breathe-slowly.mp3"},
                    {"name": "No Audio"},
                    {"name": "Elsewhere", "audio": "/static/audio/triggers/elsewhere.mp3"},
                ]
            }
        )
    )
    made = make_sounds.make(tmp_path / "lib", ["triggers"], catalog)
    names = sorted(p.relative_to(tmp_path / "lib").as_posix() for p in made)
    assert names == ["triggers/breathe-slowly.mp3", "triggers/elsewhere.mp3"]


@pytest.mark.parametrize(
    ("audio", "path"),
    [
        ("deep-breath.mp3", "triggers/deep-breath.mp3"),
        ("triggers/deep-breath.mp3", "triggers/deep-breath.mp3"),
        ("/static/audio/triggers/deep-breath.mp3", "triggers/deep-breath.mp3"),
        ("audio/effects/chime.mp3", "effects/chime.mp3"),
    ],
)
def test_library_path(audio: str, path: str) -> None:
    assert make_sounds.library_path(audio) == path


@pytest.mark.parametrize(
    "audio", ["", "../etc/passwd", "triggers/../../x.mp3", "/etc/x.mp3", ".hidden.mp3", "a b.mp3"]
)
def test_library_path_refuses_paths_outside_the_library(audio: str) -> None:
    with pytest.raises(ValueError):
        make_sounds.library_path(audio)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("[", "triggers.json"),
        ('{"triggers": 3}', "expected a list"),
        ('[{"audio": "x.mp3"}]', "triggers[0]: no name"),
        ('[{"name": "A"}, {"name": "Bad", "audio": "../x.mp3"}]', "triggers[1] (Bad)"),
        ('[{"name": "A", "audio": 5}]', "audio is not a string"),
    ],
)
def test_catalog_errors_name_the_entry(tmp_path: Path, document: str, message: str) -> None:
    catalog = tmp_path / "triggers.json"
    catalog.write_text(document)
    with pytest.raises(make_sounds.SoundError, match=re.escape(message)):
        make_sounds.load_catalog(catalog)
