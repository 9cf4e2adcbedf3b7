"""Tests of audio input: conversion helpers, stream_audio pacing and errors, microphone, CLI."""

from __future__ import annotations

import base64
import io
import math
import subprocess
import sys
import threading
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TIMEOUT, ClientFactory, wait_until

from avatar_im import (
    AudioDeviceError,
    AudioFormatError,
    AudioStreamError,
    AvatarIM,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    SessionNotStartedError,
    cli,
)
from avatar_im import audio as audio_mod
from avatar_im.audio import (
    AudioStream,
    check_chunk_ms,
    chunk_samples,
    decode_audio,
    due_time,
    pcm_from_array,
    split_pcm,
    wav_bytes,
)
from avatar_im.microphone import Microphone, stream_microphone
from avatar_im.server import ReferenceServer

RATE = 16000


# --- helpers -----------------------------------------------------------------------------------


def noise(seconds: float, *, rate: int = RATE, channels: int = 1, seed: int = 1) -> np.ndarray:
    """Random int16 samples, interleaved when *channels* > 1 (every byte matters)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, size=round(seconds * rate) * channels, dtype=np.int16)


def tone(seconds: float, *, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine tone as int16 samples, the same in every channel, interleaved."""
    t = np.arange(round(seconds * rate)) / rate
    mono = np.round(np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)
    return np.repeat(mono, channels)


def write_wav(path: Path, samples: np.ndarray, *, rate: int = RATE, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(samples.astype("<i2").tobytes())
    return path


def no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a machine without the 'audio' extra."""

    def missing() -> Any:
        raise ImportError("No module named 'soxr'")

    monkeypatch.setattr(audio_mod, "_audio_extra", missing)


def nothing_sent(server: ReferenceServer, client: AvatarIM, sent_before: int) -> bool:
    session = server.session(client.session_id)
    return (
        session is not None
        and session.audio_chunks == []
        and client.stats.messages_sent == sent_before
        and client.stats.outbox == 0
    )


# --- pure helpers ------------------------------------------------------------------------------


def test_due_time_is_start_plus_duration_of_samples_before() -> None:
    """Chunk k is due at start + k x chunk duration, computed from samples (no summed drift)."""
    assert due_time(100.0, 0, RATE) == 100.0
    assert due_time(100.0, 640 * 249, RATE) == 100.0 + 249 * 640 / RATE
    summed = 100.0
    for _ in range(250_000):
        summed += 0.04
    assert abs(due_time(100.0, 640 * 250_000, RATE) - (100.0 + 10_000.0)) < 1e-9
    assert abs(summed - (100.0 + 10_000.0)) > 1e-9  # what adding durations up would drift to


def test_chunk_samples_and_split_pcm() -> None:
    """chunk_ms becomes whole samples at the session rate; PCM splits into equal chunks."""
    assert chunk_samples(40, RATE) == 640
    assert chunk_samples(20, 8000) == 160
    assert [len(c) for c in split_pcm(b"\x00" * 3000, 1280)] == [1280, 1280, 440]
    with pytest.raises(InvalidArgumentError, match="shorter than one sample"):
        chunk_samples(0.01, 8000)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, InvalidArgumentError),
        (-40, InvalidArgumentError),
        (math.nan, InvalidArgumentError),
        (math.inf, InvalidArgumentError),
        (True, InvalidArgumentTypeError),
        ("40", InvalidArgumentTypeError),
    ],
)
def test_check_chunk_ms_rejects_non_positive_and_non_numbers(
    value: object, error: type[Exception]
) -> None:
    """chunk_ms must be a finite number > 0."""
    with pytest.raises(error):
        check_chunk_ms(value)


def test_pcm_from_array_converts_int16_and_float() -> None:
    """int16 passes as little-endian bytes; float in [-1, 1] is scaled by 32767 and rounded."""
    ints = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    assert pcm_from_array(ints) == ints.astype("<i2").tobytes()
    assert pcm_from_array(ints.astype(">i2")) == ints.astype("<i2").tobytes()
    floats = np.array([-1.0, 0.0, 0.25, 1.0], dtype=np.float32)
    expected = np.array([-32767, 0, 8192, 32767], dtype="<i2").tobytes()
    assert pcm_from_array(floats) == expected
    assert pcm_from_array(floats.astype(np.float64)) == expected


@pytest.mark.parametrize(
    ("array", "complaint"),
    [
        (np.zeros((10, 2), dtype=np.int16), "1-D"),
        (np.zeros((10, 1), dtype=np.int16), "1-D"),
        (np.zeros(10, dtype=np.int32), "dtype int32"),
        (np.zeros(10, dtype=np.uint8), "dtype uint8"),
        (np.array([0.5, 1.5]), "in \\[-1, 1\\]"),
        (np.array([0.0, np.nan]), "NaN"),
        (np.zeros(0, dtype=np.int16), "empty"),
    ],
)
def test_pcm_from_array_rejects_bad_arrays(array: np.ndarray, complaint: str) -> None:
    """Other shapes, dtypes, out-of-range or NaN floats and empty arrays are AudioFormatError."""
    with pytest.raises(AudioFormatError, match=complaint):
        pcm_from_array(array)


def test_wav_bytes_is_a_readable_wav() -> None:
    """wav_bytes puts a canonical 44-byte header that the wave module reads back."""
    pcm = noise(0.01).tobytes()
    data = wav_bytes(pcm, 8000)
    assert len(data) == 44 + len(pcm)
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 8000)
        assert reader.readframes(reader.getnframes()) == pcm


def test_matching_wav_needs_no_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A WAV already 16 kHz mono 16-bit is read by the stdlib alone."""
    no_extra(monkeypatch)
    samples = noise(0.1)
    data = write_wav(tmp_path / "a.wav", samples).read_bytes()
    assert decode_audio(data, sample_rate=RATE) == samples.tobytes()


def test_not_audio_is_refused_with_and_without_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes that are no audio file raise AudioFormatError, whether the extra is there or not."""
    pytest.importorskip("soundfile")
    with pytest.raises(AudioFormatError, match="not an audio file"):
        decode_audio(b"hello, this is text\n", sample_rate=RATE, name="notes")
    no_extra(monkeypatch)
    with pytest.raises(AudioFormatError, match=r"notes is not a WAV file.*'audio' extra"):
        decode_audio(b"hello, this is text\n", sample_rate=RATE, name="notes")


def test_optional_libraries_are_not_imported_at_import_time() -> None:
    """Importing avatar_im, its audio, microphone and cli loads none of the optional libraries."""
    code = (
        "import sys, avatar_im, avatar_im.audio, avatar_im.microphone, avatar_im.cli\n"
        "print(sorted(m for m in ('numpy', 'soundfile', 'soxr', 'sounddevice') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_audio_errors_are_exported_and_typed() -> None:
    """The new errors are public and fit the tree (bad audio is an InvalidArgumentError)."""
    import avatar_im

    for name in ("AudioDeviceError", "AudioFormatError", "AudioStreamError"):
        assert name in avatar_im.__all__
    assert issubclass(AudioFormatError, InvalidArgumentError)
    assert issubclass(AudioFormatError, ValueError)


# --- send_audio --------------------------------------------------------------------------------


def test_send_audio_accepts_numpy_arrays(server: ReferenceServer, ready_client: AvatarIM) -> None:
    """send_audio takes int16 and float arrays; the server decodes the int16 PCM."""
    ints = noise(0.02)
    floats = np.array([0.0, 0.5, -1.0], dtype=np.float32)
    for data in (ints, floats):
        ready_client.wait_ack(ready_client.send_audio(data), TIMEOUT)
    expected = ints.tobytes() + np.array([0, 16384, -32767], dtype="<i2").tobytes()
    assert server.session("s0").audio_bytes == expected


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.send_audio(b"\x00\x01\x02"), AudioFormatError),
        (lambda c: c.send_audio(base64="not base64!"), InvalidArgumentError),
        (lambda c: c.send_audio(base64=base64.b64encode(b"\x00").decode()), AudioFormatError),
        (lambda c: c.send_audio(np.zeros((4, 2), dtype=np.int16)), AudioFormatError),
        (lambda c: c.send_audio(np.array([2.0])), AudioFormatError),
        (lambda c: c.send_audio([0, 1]), InvalidArgumentTypeError),
    ],
)
def test_send_audio_rejects_bad_audio_before_sending(
    server: ReferenceServer,
    ready_client: AvatarIM,
    call: Callable[[AvatarIM], object],
    error: type[Exception],
) -> None:
    """Odd-length PCM, bad base64, bad arrays and wrong types raise; nothing is sent."""
    sent = ready_client.stats.messages_sent
    with pytest.raises(error):
        call(ready_client)
    assert nothing_sent(server, ready_client, sent)


# --- stream_audio: files, pacing, conversion ---------------------------------------------------


def test_stream_10s_wav_realtime_arrives_whole_and_on_pace(
    server: ReferenceServer, ready_client: AvatarIM, tmp_path: Path
) -> None:
    """A 10 s 16 kHz WAV in real time: every byte, in order; chunk k arrives k x 40 ms in."""
    samples = noise(10.0)
    path = write_wav(tmp_path / "ten.wav", samples)
    stream = ready_client.stream_audio(path, chunk_ms=40, realtime=True)
    assert stream.done and stream.error is None and not stream.stopped
    assert stream.chunks_sent == 250 and stream.seconds_sent == pytest.approx(10.0)
    ready_client.flush(TIMEOUT)
    session = server.session("s0")
    assert session.audio_bytes == samples.tobytes()
    assert [size for _, size in session.audio_chunks] == [1280] * 250
    arrivals = [t for t, _ in session.audio_chunks]
    schedule = [k * 0.04 for k in range(250)]
    drift = [arrival - arrivals[0] - due for arrival, due in zip(arrivals, schedule, strict=True)]
    assert abs(drift[-1]) < 0.25, f"last chunk off its schedule by {drift[-1] * 1000:.1f} ms"
    assert max(abs(d) for d in drift) < 0.25
    assert session.audio_duration == pytest.approx(10.0)
    assert [mid for mid, _ in session.messages[1:]] == stream.message_ids


def test_stream_fast_file_object_bytes_and_array(
    server: ReferenceServer, ready_client: AvatarIM, tmp_path: Path
) -> None:
    """realtime=False sends a file object, raw bytes and an array whole, in chunk_ms chunks."""
    samples = noise(1.0)
    data = write_wav(tmp_path / "one.wav", samples).read_bytes()
    with open(tmp_path / "one.wav", "rb") as file:
        first = ready_client.stream_audio(file, chunk_ms=100, realtime=False)
    second = ready_client.stream_audio(samples.tobytes(), chunk_ms=250, realtime=False)
    third = ready_client.stream_audio(samples, chunk_ms=300, realtime=False)
    fourth = ready_client.stream_audio(io.BytesIO(data), realtime=False)
    assert [s.chunks_sent for s in (first, second, third, fourth)] == [10, 4, 4, 25]
    ready_client.flush(TIMEOUT)
    session = server.session("s0")
    assert session.audio_bytes == samples.tobytes() * 4
    assert [size for _, size in session.audio_chunks[10:18]] == [8000] * 4 + [9600] * 3 + [3200]


def test_stream_iterable_is_paced_by_each_chunks_duration(
    server: ReferenceServer, ready_client: AvatarIM
) -> None:
    """Chunks of an iterable go as they are, chunk k leaving after the durations of those before."""
    chunks: list[Any] = [
        noise(0.02).tobytes(),
        noise(0.06, seed=2),  # an array
        bytearray(noise(0.02, seed=3).tobytes()),
        b"",  # skipped
        memoryview(noise(0.01, seed=4).tobytes()),
    ]
    stream = ready_client.stream_audio(iter(chunks), realtime=True)
    assert stream.chunks_sent == 4 and stream.total_seconds is None
    ready_client.flush(TIMEOUT)
    session = server.session("s0")
    assert [size for _, size in session.audio_chunks] == [640, 1920, 640, 320]
    arrivals = [t - session.audio_chunks[0][0] for t, _ in session.audio_chunks]
    for arrival, due in zip(arrivals, [0.0, 0.02, 0.08, 0.10], strict=True):
        assert due - 0.005 <= arrival < due + 0.25


def test_stream_converts_44k_stereo_wav_with_extra(
    server: ReferenceServer, ready_client: AvatarIM, tmp_path: Path
) -> None:
    """With the audio extra, a 44.1 kHz stereo WAV is resampled to 16 kHz mono."""
    pytest.importorskip("soxr")
    pytest.importorskip("soundfile")
    path = write_wav(tmp_path / "cd.wav", tone(1.0, rate=44100, channels=2), rate=44100, channels=2)
    stream = ready_client.stream_audio(path, realtime=False)
    assert stream.total_seconds == pytest.approx(1.0, abs=0.001)
    ready_client.flush(TIMEOUT)
    pcm = np.frombuffer(server.session("s0").audio_bytes, dtype="<i2")
    assert abs(len(pcm) - RATE) <= 1
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * RATE / len(pcm)
    assert peak_hz == pytest.approx(440, abs=2)
    assert 11000 < np.abs(pcm).max() < 13000  # the tone's amplitude survived the mix-down


def test_stream_refuses_44k_stereo_wav_without_extra(
    server: ReferenceServer,
    ready_client: AvatarIM,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the audio extra, a 44.1 kHz stereo WAV is refused, naming the mismatch."""
    no_extra(monkeypatch)
    path = write_wav(tmp_path / "cd.wav", tone(0.1, rate=44100, channels=2), rate=44100, channels=2)
    sent = ready_client.stats.messages_sent
    with pytest.raises(AudioFormatError) as caught:
        ready_client.stream_audio(path)
    message = str(caught.value)
    assert "44100 Hz, 16-bit, 2 channels" in message
    assert "16000 Hz, 16-bit, mono" in message
    assert "'audio' extra" in message
    assert nothing_sent(server, ready_client, sent)


def test_stream_in_wav_session_sends_wav_chunks(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """In a wav session each chunk carries a WAV header at the session's rate."""
    client = make_client()
    client.start_session(format="wav", sample_rate=8000)
    client.wait_session_ready(TIMEOUT)
    samples = noise(0.2, rate=8000)
    stream = client.stream_audio(samples, chunk_ms=100, realtime=False)
    client.flush(TIMEOUT)
    session = server.session("s0")
    assert stream.chunks_sent == 2 and session.audio_duration == pytest.approx(0.2)
    body = samples.tobytes()
    assert session.audio_bytes == wav_bytes(body[:1600], 8000) + wav_bytes(body[1600:], 8000)


def test_fast_stream_waits_for_room_in_a_small_outbox(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A fast stream larger than the outbox waits for acks instead of failing."""
    client = make_client(max_outbox=4)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    samples = noise(1.0)
    stream = client.stream_audio(samples, chunk_ms=20, realtime=False)
    assert stream.chunks_sent == 50
    client.flush(TIMEOUT)
    assert server.session("s0").audio_bytes == samples.tobytes()


# --- stream_audio: bad input -------------------------------------------------------------------


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.wav"
    path.write_text("not audio at all\n")
    return path


def _closed_file(tmp_path: Path) -> Any:
    file = open(write_wav(tmp_path / "c.wav", noise(0.1)), "rb")  # noqa: SIM115
    file.close()
    return file


@pytest.mark.parametrize(
    ("make_source", "kwargs", "error", "complaint"),
    [
        (lambda p: b"\x00\x01\x02", {}, AudioFormatError, "even number of bytes"),
        (lambda p: b"", {}, AudioFormatError, "empty"),
        (_text_file, {}, AudioFormatError, "not"),
        (_closed_file, {}, InvalidArgumentError, "closed"),
        (lambda p: open(_text_file(p)), {}, InvalidArgumentTypeError, "binary mode"),  # noqa: SIM115
        (lambda p: p / "missing.wav", {}, InvalidArgumentError, "cannot read"),
        (lambda p: noise(0.1), {"chunk_ms": 0}, InvalidArgumentError, "chunk_ms"),
        (lambda p: noise(0.1), {"chunk_ms": -40}, InvalidArgumentError, "chunk_ms"),
        (lambda p: np.zeros((5, 2)), {}, AudioFormatError, "1-D"),
        (lambda p: 42, {}, InvalidArgumentTypeError, "audio source"),
        (lambda p: {"a": b"\x00\x00"}, {}, InvalidArgumentTypeError, "audio source"),
        (lambda p: noise(0.1), {"realtime": "yes"}, InvalidArgumentTypeError, "realtime"),
    ],
)
def test_bad_sources_raise_before_anything_is_sent(
    server: ReferenceServer,
    ready_client: AvatarIM,
    tmp_path: Path,
    make_source: Callable[[Path], Any],
    kwargs: dict[str, Any],
    error: type[Exception],
    complaint: str,
) -> None:
    """Odd PCM, a non-audio file, a closed file, chunk_ms <= 0...: a typed error, nothing sent."""
    source = make_source(tmp_path)
    sent = ready_client.stats.messages_sent
    try:
        with pytest.raises(error, match=complaint):
            ready_client.stream_audio(source, **kwargs)
    finally:
        if hasattr(source, "close"):
            source.close()
    assert nothing_sent(server, ready_client, sent)


def test_stream_before_start_session_raises(make_client: ClientFactory) -> None:
    """Streaming with no session raises SessionNotStartedError at the call."""
    client = make_client()
    with pytest.raises(SessionNotStartedError):
        client.stream_audio(noise(0.1), background=True)


def test_iterable_error_mid_stream_says_how_many_chunks_went(
    server: ReferenceServer, ready_client: AvatarIM
) -> None:
    """A bad chunk after two good ones stops the stream with AudioStreamError(chunks_sent=2)."""
    closed = threading.Event()

    def chunks() -> Iterator[bytes]:
        try:
            yield b"\x00\x00" * 160
            yield b"\x01\x00" * 160
            yield b"\x00\x01\x02"
            yield b"\x00\x00" * 160
        finally:
            closed.set()

    with pytest.raises(AudioStreamError, match="after 2 chunk") as caught:
        ready_client.stream_audio(chunks(), realtime=False)
    assert caught.value.chunks_sent == 2 and len(caught.value.message_ids) == 2
    assert isinstance(caught.value.__cause__, AudioFormatError)
    assert closed.is_set()  # the generator was closed
    ready_client.flush(TIMEOUT)
    assert [size for _, size in server.session("s0").audio_chunks] == [320, 320]


def test_bad_first_chunk_raises_its_own_error(
    server: ReferenceServer, ready_client: AvatarIM
) -> None:
    """When nothing was sent yet, the chunk's error is raised as it is."""
    sent = ready_client.stats.messages_sent
    with pytest.raises(InvalidArgumentTypeError, match="chunks must be bytes"):
        ready_client.stream_audio(["not bytes"], realtime=False)
    assert nothing_sent(server, ready_client, sent)


def test_background_stream_records_its_error(ready_client: AvatarIM) -> None:
    """In the background, the error is kept on the handle; wait() returns when it ended."""
    stream = ready_client.stream_audio([b"\x00\x00" * 10, b"\x00"], realtime=False, background=True)
    assert stream.wait(TIMEOUT) and stream.done
    assert isinstance(stream.error, AudioStreamError) and stream.error.chunks_sent == 1


def test_source_raising_mid_stream_is_wrapped_with_its_cause(ready_client: AvatarIM) -> None:
    """A generator that raises after a chunk ends the stream; the error keeps it as cause."""

    def chunks() -> Iterator[bytes]:
        yield b"\x00\x00" * 10
        raise RuntimeError("device unplugged")

    stream = ready_client.stream_audio(chunks(), realtime=False, background=True)
    assert stream.wait(TIMEOUT)
    assert isinstance(stream.error, AudioStreamError) and stream.error.chunks_sent == 1
    assert isinstance(stream.error.__cause__, RuntimeError)
    assert "device unplugged" in str(stream.error)


# --- stopping ----------------------------------------------------------------------------------


def test_stop_ends_a_background_stream_early(
    server: ReferenceServer, ready_client: AvatarIM
) -> None:
    """stop() interrupts the pacing wait; the chunks sent so far are all the server got."""
    three = threading.Event()

    def progress(stream: AudioStream) -> None:
        if stream.chunks_sent >= 3:
            three.set()

    stream = ready_client.stream_audio(noise(10.0), background=True, on_progress=progress)
    assert three.wait(TIMEOUT)
    stream.stop(timeout=TIMEOUT)
    assert stream.done and stream.stopped and stream.error is None
    assert 3 <= stream.chunks_sent < 250
    ready_client.flush(TIMEOUT)
    assert len(server.session("s0").audio_chunks) == stream.chunks_sent


def test_close_stops_background_streams(ready_client: AvatarIM) -> None:
    """close() stops a running background stream and joins its thread."""
    first = threading.Event()
    stream = ready_client.stream_audio(
        noise(10.0), background=True, on_progress=lambda s: first.set()
    )
    assert first.wait(TIMEOUT)
    ready_client.close()
    assert stream.done and stream.stopped
    assert not [t for t in threading.enumerate() if t.name.startswith("avatar-im-audio-")]


def test_progress_callback_errors_do_not_stop_the_stream(ready_client: AvatarIM) -> None:
    """A raising on_progress is logged and the stream goes on."""

    def boom(stream: AudioStream) -> None:
        raise RuntimeError("boom")

    stream = ready_client.stream_audio(noise(0.2), realtime=False, on_progress=boom)
    assert stream.chunks_sent == 5 and stream.error is None


# --- microphone --------------------------------------------------------------------------------


class FakeInput:
    """A stand-in for sounddevice.RawInputStream: the test feeds the blocks."""

    def __init__(self, preload: list[bytes], **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.preload = preload
        self.started = self.stopped = self.closed = False

    def feed(self, block: bytes) -> None:
        self.kwargs["callback"](block, len(block) // 2, None, None)

    def start(self) -> None:
        self.started = True
        for block in self.preload:
            self.feed(block)

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


def fake_factory(preload: list[bytes] | None = None) -> tuple[Callable[..., FakeInput], list[Any]]:
    made: list[FakeInput] = []

    def factory(**kwargs: Any) -> FakeInput:
        stream = FakeInput(list(preload or []), **kwargs)
        made.append(stream)
        return stream

    return factory, made


def test_microphone_yields_blocks_until_seconds_then_closes() -> None:
    """The microphone opens 16-bit mono at the rate, yields chunk_ms blocks, stops at seconds."""
    blocks = [noise(0.04, seed=i).tobytes() for i in range(5)]
    factory, made = fake_factory(blocks)
    mic = Microphone(sample_rate=RATE, chunk_ms=40, seconds=0.1, stream_factory=factory)
    assert list(mic) == [blocks[0], blocks[1], blocks[2][:640]]
    (device,) = made
    assert device.kwargs["samplerate"] == RATE and device.kwargs["channels"] == 1
    assert device.kwargs["dtype"] == "int16" and device.kwargs["blocksize"] == 640
    assert device.started and device.stopped and device.closed


def test_microphone_drops_oldest_when_consumer_lags() -> None:
    """A full buffer drops the oldest block and counts it."""
    blocks = [noise(0.04, seed=i).tobytes() for i in range(4)]
    factory, _ = fake_factory(blocks)
    mic = Microphone(seconds=0.08, max_buffer=2, stream_factory=factory)
    assert list(mic) == blocks[2:] and mic.overruns == 2


def test_microphone_silence_raises_device_error() -> None:
    """No data for read_timeout seconds raises AudioDeviceError."""
    factory, made = fake_factory()
    with pytest.raises(AudioDeviceError, match="no audio"):
        list(Microphone(read_timeout=0.05, stream_factory=factory))
    assert made[0].closed


def test_microphone_without_sounddevice_raises_device_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without sounddevice, opening the microphone says to install the audio extra."""
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(AudioDeviceError, match="'audio' extra"):
        Microphone().open()


def test_stream_microphone_runs_in_background_until_stopped(
    server: ReferenceServer, ready_client: AvatarIM
) -> None:
    """stream_microphone sends blocks as they come; stop() ends it and closes the device."""
    factory, made = fake_factory()
    two = threading.Event()
    stream = stream_microphone(
        ready_client,
        stream_factory=factory,
        on_progress=lambda s: s.chunks_sent >= 2 and two.set(),
    )
    (device,) = made
    blocks = [noise(0.04, seed=i).tobytes() for i in range(2)]
    for block in blocks:
        device.feed(block)
    assert two.wait(TIMEOUT)
    stream.stop(timeout=TIMEOUT)
    assert stream.done and stream.error is None and stream.chunks_sent == 2
    assert device.closed
    ready_client.flush(TIMEOUT)
    assert server.session("s0").audio_bytes == b"".join(blocks)


def test_client_close_stops_the_microphone(ready_client: AvatarIM) -> None:
    """close() stops a microphone stream that is waiting for data, at once."""
    factory, made = fake_factory()
    stream = stream_microphone(ready_client, stream_factory=factory)
    ready_client.close()
    assert stream.done and made[0].closed


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_send_audio_prints_replies_and_progress(
    server: ReferenceServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """send-audio --fast streams a 4 s file, prints every reply and a progress bar on stderr."""
    samples = noise(4.0)
    path = write_wav(tmp_path / "four.wav", samples)
    argv = ["send-audio", str(path), "--fast", "--url", server.url, "--session-id", "cli"]
    assert cli.main([*argv, "--reply-wait", "0.2", "--timeout", str(TIMEOUT)]) == 0
    out, err = capsys.readouterr()
    assert out.count("<- audio_received") == 100  # the echo profile answers every chunk
    assert "<- stop_result" in out and "sent 100 chunks" in out
    assert "100%" in err and "4.0/4.0 s" in err
    assert server.session("cli").audio_bytes == samples.tobytes()


def test_cli_send_audio_uses_an_embedded_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --url, send-audio runs against an embedded server; short files get no bar.

    The embedded server is cloud-shaped: the noise is heard as speech (asr).
    """
    path = write_wav(tmp_path / "short.wav", noise(0.2))
    assert cli.main(["send-audio", str(path), "--realtime", "--reply-wait", "0.2"]) == 0
    out, err = capsys.readouterr()
    assert "reference server at ws://127.0.0.1:" in out
    assert out.count("<- asr ") == 1 and "<- stop_result" in out and "%" not in err


def test_cli_send_audio_refuses_a_non_audio_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that is not audio exits 1 with the reason, before connecting."""
    no_extra(monkeypatch)
    assert cli.main(["send-audio", str(_text_file(tmp_path))]) == 1
    out, err = capsys.readouterr()
    assert "is not a WAV file" in err and out == ""


def test_microphone_pause_drops_captured_audio_until_resume() -> None:
    """While paused, captured blocks are dropped and counted; resume passes them on again."""
    factory, made = fake_factory()
    mic = Microphone(seconds=0.08, read_timeout=0.2, stream_factory=factory)
    mic.open()
    (device,) = made
    mic.pause()
    assert mic.paused
    device.feed(noise(0.04, seed=1).tobytes())
    mic.resume()
    kept = [noise(0.04, seed=n).tobytes() for n in (2, 3)]
    for block in kept:
        device.feed(block)
    assert list(mic) == kept and mic.blocks_paused == 1


def test_paused_microphone_does_not_time_out(ready_client: AvatarIM) -> None:
    """A paused microphone waits without raising; interrupt(stop_streams=False) keeps it."""
    factory, made = fake_factory()
    mic = Microphone(read_timeout=0.05, stream_factory=factory)
    mic.open()
    mic.pause()
    stream = ready_client.stream_audio(mic, realtime=False, background=True)
    report = ready_client.interrupt(TIMEOUT, stop_streams=False)
    assert report.streams_stopped == 0 and not stream.done
    assert not stream.wait(0.2)  # longer than read_timeout: still running, no error
    mic.resume()
    made[0].feed(noise(0.04).tobytes())
    assert wait_until(lambda: stream.chunks_sent == 1, TIMEOUT)
    stream.stop(TIMEOUT)
