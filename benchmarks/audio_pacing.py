"""How closely ``stream_audio(realtime=True)`` keeps real time, measured at the server.

Writes a WAV of random 16-bit mono samples (10 s at 16 kHz by default),
streams it to an embedded reference server in 40 ms chunks, and reports from
the server's arrival times (one monotonic clock, same process):

* the span from the first chunk's arrival to the last's, against the
  schedule's ``(n - 1) x chunk duration`` (the last chunk leaves one chunk
  before the audio ends);
* the drift of each chunk: its arrival minus the first's minus ``k x chunk
  duration`` (last, worst, median, 95th percentile);
* whether the server's decoded PCM is byte for byte the file's.

``--naive`` also runs the loop a user would write first (send, then
``time.sleep(chunk duration)``), whose drift grows with every chunk.

Run from the repository root: ``python -m benchmarks.audio_pacing [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Sequence
from pathlib import Path

from avatar_im import AvatarIM
from avatar_im.server import ReferenceServer

__all__ = ["main"]


def _write_wav(path: Path, seconds: float, rate: int) -> bytes:
    pcm = os.urandom(round(seconds * rate) * 2)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm)
    return pcm


def _report(label: str, arrivals: list[float], chunk_s: float) -> None:
    drift = [(t - arrivals[0] - k * chunk_s) * 1000 for k, t in enumerate(arrivals)]
    span = arrivals[-1] - arrivals[0]
    expected = (len(arrivals) - 1) * chunk_s
    ordered = sorted(abs(d) for d in drift)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(f"{label}:")
    print(f"  chunks                 {len(arrivals)}")
    print(f"  first -> last arrival  {span:.4f} s (schedule: {expected:.4f} s)")
    print(f"  last chunk drift       {drift[-1]:+.2f} ms")
    print(f"  worst |drift|          {ordered[-1]:.2f} ms")
    print(f"  median |drift|         {statistics.median(ordered):.2f} ms, p95 {p95:.2f} ms")


def _client(server: ReferenceServer, session_id: str, rate: int) -> AvatarIM:
    client = AvatarIM(
        token="bench", app_id="bench", tenant_id="bench", session_id=session_id, url=server.url
    )
    client.start_session(format="pcm", sample_rate=rate)
    client.wait_session_ready(10)
    return client


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length (default 10)")
    parser.add_argument("--chunk-ms", type=float, default=40.0, help="chunk length (default 40)")
    parser.add_argument("--rate", type=int, default=16000, help="sample rate (default 16000)")
    parser.add_argument("--naive", action="store_true", help="also run a send-then-sleep loop")
    args = parser.parse_args(argv)
    chunk_s = args.chunk_ms / 1000

    # profile="echo": one reply per chunk from the handler thread, as measured before; the
    # cloud profile would also run its speech detection over the random samples.
    with tempfile.TemporaryDirectory() as tmp, ReferenceServer(port=0, profile="echo") as server:
        path = Path(tmp) / "pacing.wav"
        pcm = _write_wav(path, args.seconds, args.rate)
        print(f"{args.seconds:g} s of {args.rate} Hz mono in {args.chunk_ms:g} ms chunks")

        with _client(server, "paced", args.rate) as client:
            started = time.monotonic()
            stream = client.stream_audio(path, chunk_ms=args.chunk_ms, realtime=True)
            took = time.monotonic() - started
            client.flush(10)
        session = server.session("paced")
        assert session is not None
        print(f"stream_audio returned after {took:.3f} s, {stream.chunks_sent} chunks")
        _report("stream_audio(realtime=True)", [t for t, _ in session.audio_chunks], chunk_s)
        identical = session.audio_bytes == pcm
        print(f"  server PCM identical   {identical}")

        if args.naive:
            step = round(args.rate * chunk_s) * 2
            with _client(server, "naive", args.rate) as client:
                for i in range(0, len(pcm), step):
                    client.send_audio(pcm[i : i + step])
                    time.sleep(chunk_s)
                client.flush(10)
            naive = server.session("naive")
            assert naive is not None
            _report("send + time.sleep loop", [t for t, _ in naive.audio_chunks], chunk_s)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
