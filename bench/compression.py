"""What gzip costs the event loop: bambid's text encoder over real bodies.

``python -m bench.compression [--runs 200]`` feeds the site's own encoder
(``bambid.web.compression``, level 6) the bodies a browser fetches: Bootstrap's
CSS (written in 64 KiB chunks, as ``twisted.web.static.File`` does), the chat
page's largest script, the chat page's HTML, and a 200 KiB JSON answer in one
write. It prints, per body, the size before and after, and the time of the
longest single write (what one reactor turn pays) and of the whole response,
as p50 / p99 over ``--runs`` runs. Bounded: at most 10 000 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from twisted.web.test.requesthelper import DummyRequest

from bambid.web.assets import assets_dir, bootstrap_dir
from bambid.web.compression import TextGzipEncoderFactory

CHUNK = 65536


def bodies() -> list[tuple[str, str, list[bytes]]]:
    """(name, content type, writes) for each body measured."""
    static = assets_dir() / "static"
    css = (bootstrap_dir() / "css" / "bootstrap.min.css").read_bytes()
    scripts = sorted((static / "js").glob("*.js"), key=lambda p: p.stat().st_size)
    script = scripts[-1].read_bytes()
    page = (Path(assets_dir()) / "templates" / "home.html").read_bytes() * 3
    answer = json.dumps(
        {
            "profiles": [
                {"name": f"person{i}", "display_name": "Someone", "xp": i} for i in range(3000)
            ]
        }
    ).encode()
    return [
        ("bootstrap.min.css", "text/css", [css[i : i + CHUNK] for i in range(0, len(css), CHUNK)]),
        (scripts[-1].name, "text/javascript", [script]),
        ("home page (about 3x home.html)", "text/html; charset=utf-8", [page]),
        ("JSON answer", "application/json", [answer]),
    ]


def measure(content_type: str, writes: list[bytes]) -> tuple[float, float, int]:
    """(longest write, whole response) in seconds, and the compressed size."""
    request = DummyRequest([b""])
    request.code = 200  # type: ignore[attr-defined]  # DummyRequest lacks it; the encoder reads it
    request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip, deflate, br"])
    request.responseHeaders.setRawHeaders(b"content-type", [content_type.encode()])
    encoder = TextGzipEncoderFactory().encoderForRequest(request)  # type: ignore[arg-type]
    assert encoder is not None
    longest = 0.0
    size = 0
    start = time.perf_counter()
    for data in writes:
        began = time.perf_counter()
        size += len(encoder.encode(data))
        longest = max(longest, time.perf_counter() - began)
    began = time.perf_counter()
    size += len(encoder.finish())
    longest = max(longest, time.perf_counter() - began)
    return longest, time.perf_counter() - start, size


def quantile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    runs = max(1, min(args.runs, 10_000))
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {runs} runs, gzip level 6")
    for name, content_type, writes in bodies():
        results = [measure(content_type, writes) for _ in range(runs)]
        longest = [r[0] * 1000 for r in results]
        whole = [r[1] * 1000 for r in results]
        before = sum(len(w) for w in writes)
        after = results[0][2]
        print(
            f"{name}: {before / 1024:.0f} KiB -> {after / 1024:.0f} KiB in {len(writes)} writes; "
            f"longest write p50 {quantile(longest, 50):.2f} ms, "
            f"p99 {quantile(longest, 99):.2f} ms; "
            f"whole p50 {quantile(whole, 50):.2f} ms, p99 {quantile(whole, 99):.2f} ms"
        )


if __name__ == "__main__":
    main()
