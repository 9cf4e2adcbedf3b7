"""Audio for ``dataSend``: sources, conversion to the session's PCM, chunking and pacing.

A session takes 16-bit little-endian mono PCM at its sample rate (16 kHz by
default).  This module turns what a caller has into that, cuts it into chunks,
says when each chunk is due, and runs a stream of chunks:

* Pure helpers (no clock, no threads, no I/O): :func:`check_chunk_ms`,
  :func:`chunk_samples`, :func:`split_pcm`, :func:`due_time`,
  :func:`pcm_from_array`, :func:`chunk_to_pcm`, :func:`wav_bytes`,
  :func:`decode_audio`.
* File reading: :func:`read_audio` (a path or a binary file object).
* :func:`prepare_source`: every accepted source, checked and (for finite ones)
  converted up front, so a bad source raises before anything is sent.
* :class:`AudioStream`: the handle of a running stream; the only part of this
  module that reads the clock, waits or starts a thread.

WAV files in the session's own format need nothing but the standard library
(:mod:`wave`).  Anything else (another rate, width or channel count, FLAC,
float WAV...) is converted with the ``audio`` extra: ``soundfile`` decodes,
``soxr`` resamples, ``numpy`` mixes down to mono.  They are imported lazily,
only to convert, by :func:`_audio_extra`; without them the conversion is
refused with an :class:`~avatar_im.exceptions.AudioFormatError` that names
the mismatch.  This module must never import numpy, soundfile, soxr or
sounddevice at import time.
"""

from __future__ import annotations

import importlib
import io
import itertools
import logging
import math
import os
import struct
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from .exceptions import (
    AudioFormatError,
    AudioStreamError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "BYTES_PER_SAMPLE",
    "DEFAULT_CHUNK_MS",
    "EXTRA_HINT",
    "OUTBOX_WAIT",
    "AudioSource",
    "AudioStream",
    "BinaryReader",
    "Chunk",
    "ChunkSender",
    "check_chunk_ms",
    "chunk_samples",
    "chunk_to_pcm",
    "decode_audio",
    "due_time",
    "is_array",
    "pcm_from_array",
    "prepare_source",
    "read_audio",
    "split_pcm",
    "wav_bytes",
]

logger = logging.getLogger(__name__)

#: The session's audio is 16-bit mono: two bytes per sample.
BYTES_PER_SAMPLE = 2
#: The length of the canonical RIFF/WAVE header (see :func:`wav_bytes`).
WAV_HEADER_BYTES = 44
#: The default chunk length of :meth:`AvatarIM.stream_audio`, in milliseconds.
DEFAULT_CHUNK_MS = 40.0
#: Seconds a stream waits for room in a full outbox before it fails (without ``send_timeout``).
OUTBOX_WAIT = 30.0
#: What to install to convert audio.
EXTRA_HINT = "pip install 'avatar-im[audio]'"

#: One chunk of an iterable source: PCM bytes or a 1-D NumPy array.
Chunk: TypeAlias = "bytes | bytearray | memoryview | npt.NDArray[Any]"
#: What :meth:`AvatarIM.stream_audio` accepts.
AudioSource: TypeAlias = (
    "str | os.PathLike[str] | bytes | bytearray | memoryview | npt.NDArray[Any] "
    "| BinaryReader | Iterable[Chunk]"
)

# Magic numbers of audio containers, to tell "not WAV but maybe audio" from garbage.
_RIFF = b"RIFF"
_WAVE = b"WAVE"


class BinaryReader(Protocol):
    """A binary file object: anything with ``read()`` returning bytes."""

    def read(self, size: int = -1, /) -> bytes: ...


#: Sends one PCM chunk; the event is the stream's stop signal.  Returns the message id,
#: or ``None`` when the stop signal interrupted a wait before anything was sent.
ChunkSender = Callable[[bytes, threading.Event], "str | None"]


# --- pure helpers ------------------------------------------------------------------------------


def check_chunk_ms(chunk_ms: object) -> float:
    """Return *chunk_ms* as a float; raise unless it is a finite number > 0."""
    if isinstance(chunk_ms, bool) or not isinstance(chunk_ms, (int, float)):
        raise InvalidArgumentTypeError(f"chunk_ms must be a number, got {type(chunk_ms).__name__}")
    if not math.isfinite(chunk_ms) or chunk_ms <= 0:
        raise InvalidArgumentError(f"chunk_ms must be > 0, got {chunk_ms!r}")
    return float(chunk_ms)


def chunk_samples(chunk_ms: float, sample_rate: int) -> int:
    """Return the samples in one *chunk_ms* chunk at *sample_rate* (at least 1 sample)."""
    samples = round(sample_rate * chunk_ms / 1000)
    if samples < 1:
        raise InvalidArgumentError(
            f"chunk_ms={chunk_ms!r} is shorter than one sample at {sample_rate} Hz"
        )
    return samples


def split_pcm(pcm: bytes, chunk_bytes: int) -> list[bytes]:
    """Cut *pcm* into chunks of *chunk_bytes* (the last may be shorter)."""
    return [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]


def due_time(start: float, samples_before: int, sample_rate: int) -> float:
    """When a chunk is due: *start* plus the duration of the *samples_before* it.

    The pacing rule: with fixed chunks of ``n`` samples, chunk ``k`` is due at
    ``start + k * n / sample_rate``.  Computed from the sample count, not by
    adding up durations, so it never drifts.
    """
    return start + samples_before / sample_rate


def is_array(value: object) -> bool:
    """True if *value* is a NumPy array (without importing NumPy)."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def pcm_from_array(array: npt.NDArray[Any]) -> bytes:
    """Return the 16-bit little-endian PCM of a 1-D *array*.

    ``int16`` samples are taken as they are; float samples must lie in
    [-1, 1] and are scaled by 32767 and rounded.  Other dtypes, other shapes,
    NaNs and out-of-range floats raise :class:`AudioFormatError`.
    """
    import numpy as np

    if array.ndim != 1:
        raise AudioFormatError(
            f"audio arrays must be 1-D (mono samples), got shape {array.shape}; "
            "mix down first, e.g. array.mean(axis=1)"
        )
    if array.size == 0:
        raise AudioFormatError("the audio array is empty")
    if array.dtype.kind == "i" and array.dtype.itemsize == BYTES_PER_SAMPLE:  # any byte order
        return array.astype("<i2", copy=False).tobytes()
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise AudioFormatError("the float audio array holds NaN or infinite samples")
        peak = float(np.abs(array).max())
        if peak > 1.0:
            raise AudioFormatError(f"float audio samples must lie in [-1, 1], found {peak:g}")
        return np.round(array * 32767.0).astype("<i2").tobytes()
    raise AudioFormatError(
        f"audio arrays must be int16, or float in [-1, 1]; got dtype {array.dtype}"
    )


def chunk_to_pcm(chunk: object) -> bytes:
    """Return one chunk (bytes-like or a 1-D array) as 16-bit PCM; raise if it is not."""
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        raw = bytes(chunk)
        if len(raw) % BYTES_PER_SAMPLE:
            raise AudioFormatError(
                f"16-bit PCM needs an even number of bytes, got a chunk of {len(raw)}"
            )
        return raw
    if is_array(chunk):
        return pcm_from_array(chunk)  # type: ignore[arg-type]
    raise InvalidArgumentTypeError(
        f"audio chunks must be bytes or NumPy arrays, got {type(chunk).__name__}"
    )


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    """Return *pcm* (16-bit mono) with the canonical 44-byte RIFF/WAVE header in front."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        _RIFF,
        36 + len(pcm),
        _WAVE,
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        sample_rate,
        sample_rate * BYTES_PER_SAMPLE,
        BYTES_PER_SAMPLE,
        8 * BYTES_PER_SAMPLE,
        b"data",
        len(pcm),
    )
    return header + pcm


def _describe(rate: int, width: int, channels: int) -> str:
    layout = "mono" if channels == 1 else f"{channels} channels"
    return f"{rate} Hz, {8 * width}-bit, {layout}"


def decode_audio(data: bytes, *, sample_rate: int, name: str = "the audio") -> bytes:
    """Return the session's PCM (16-bit mono at *sample_rate*) for the audio file *data*.

    A WAV in exactly that format is read with :mod:`wave`; anything else is
    converted with the ``audio`` extra, or refused with an
    :class:`AudioFormatError` naming the mismatch when the extra is missing.
    """
    want = _describe(sample_rate, BYTES_PER_SAMPLE, 1)
    if data[:4] == _RIFF and data[8:12] == _WAVE:
        try:
            with wave.open(io.BytesIO(data)) as reader:
                channels = reader.getnchannels()
                width = reader.getsampwidth()
                rate = reader.getframerate()
                pcm: bytes = reader.readframes(reader.getnframes())
        except (wave.Error, EOFError, struct.error) as exc:
            # Float, 24-bit-in-extensible and other encodings the stdlib cannot read.
            mismatch = f"{name} is a WAV file the standard library cannot read ({exc})"
        else:
            if (rate, width, channels) == (sample_rate, BYTES_PER_SAMPLE, 1):
                if not pcm:
                    raise AudioFormatError(f"{name} holds no audio")
                return pcm
            mismatch = f"{name} is {_describe(rate, width, channels)}; the session takes {want}"
    else:
        mismatch = f"{name} is not a WAV file"
    return _convert(data, sample_rate=sample_rate, name=name, mismatch=mismatch)


def _audio_extra() -> tuple[ModuleType, ModuleType, ModuleType]:
    """Import (soundfile, soxr, numpy) from the ``audio`` extra; raise ImportError if missing.

    Lazy on purpose: only conversions need them.  Tests replace this function
    to simulate a machine without the extra.
    """
    soundfile = importlib.import_module("soundfile")
    soxr = importlib.import_module("soxr")
    numpy = importlib.import_module("numpy")
    return soundfile, soxr, numpy


def _convert(data: bytes, *, sample_rate: int, name: str, mismatch: str) -> bytes:
    try:
        soundfile, soxr, np = _audio_extra()
    except (ImportError, OSError) as exc:  # OSError: soundfile without libsndfile
        raise AudioFormatError(
            f"{mismatch}; converting it needs the 'audio' extra ({EXTRA_HINT}), "
            "or convert it beforehand"
        ) from exc
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        reason = str(getattr(exc, "error_string", None) or exc).rstrip(".")  # libsndfile's
        raise AudioFormatError(
            f"{name} is not an audio file that can be decoded ({reason})"
        ) from exc
    if len(samples) == 0:
        raise AudioFormatError(f"{name} holds no audio")
    mono = samples.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    logger.debug(
        "converted %s (%d Hz, %d channel(s)) to %d Hz mono",
        name,
        rate,
        samples.shape[1],
        sample_rate,
    )
    return pcm_from_array(np.clip(mono, -1.0, 1.0))


# --- reading sources ---------------------------------------------------------------------------


def read_audio(source: str | os.PathLike[str] | BinaryReader, *, sample_rate: int) -> bytes:
    """Read a whole audio file (a path or a binary file object) as the session's PCM."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read audio file {path!r}: {exc}") from exc
        return decode_audio(data, sample_rate=sample_rate, name=repr(path))
    name = getattr(source, "name", None)
    label = f"file object {name!r}" if isinstance(name, str) else "the file object"
    if getattr(source, "closed", False):
        raise InvalidArgumentError(f"{label} is closed")
    try:
        data = source.read()
    except ValueError as exc:  # "I/O operation on closed file" and the like
        raise InvalidArgumentError(f"cannot read {label}: {exc}") from exc
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {label}: {exc}") from exc
    if not isinstance(data, bytes):
        raise InvalidArgumentTypeError(
            f"{label} returned {type(data).__name__}, not bytes: open it in binary mode ('rb')"
        )
    return decode_audio(data, sample_rate=sample_rate, name=label)


def prepare_source(source: object, *, sample_rate: int) -> bytes | Iterable[object]:
    """Check *source* and return the whole PCM (finite sources) or the iterable of chunks.

    * a path (``str`` or path-like) or a binary file object: an audio file,
      read whole and converted now (see :func:`decode_audio`);
    * ``bytes``, ``bytearray`` or ``memoryview``: raw 16-bit mono PCM at the session's rate;
    * a NumPy array: mono samples (see :func:`pcm_from_array`);
    * any other iterable: chunks (bytes or arrays), each checked when it comes.
    """
    if isinstance(source, (str, os.PathLike)):
        return read_audio(source, sample_rate=sample_rate)
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = chunk_to_pcm(source)
        if not raw:
            raise AudioFormatError("the audio is empty")
        return raw
    if is_array(source):
        return pcm_from_array(source)  # type: ignore[arg-type]
    if callable(getattr(source, "read", None)):
        return read_audio(source, sample_rate=sample_rate)  # type: ignore[arg-type]
    if isinstance(source, dict) or not isinstance(source, Iterable):
        raise InvalidArgumentTypeError(
            "audio source must be a path, a binary file, bytes, a NumPy array or an "
            f"iterable of chunks, got {type(source).__name__}"
        )
    return source


# --- the stream --------------------------------------------------------------------------------

_stream_ids = itertools.count(1)


class AudioStream:
    """A running (or finished) stream of audio chunks; made by :meth:`AvatarIM.stream_audio`.

    Read :attr:`message_ids`, :attr:`chunks_sent`, :attr:`seconds_sent`,
    :attr:`done`, :attr:`stopped` and :attr:`error` from any thread; call
    :meth:`stop` to end it early and :meth:`wait` to wait for its end.

    Errors: one raised before the first chunk was sent is kept (or raised)
    as it is; one raised later is wrapped in :class:`AudioStreamError`, which
    says how many chunks were sent, with the original as ``__cause__``.
    """

    def __init__(
        self,
        chunks: Iterable[object],
        *,
        sample_rate: int,
        realtime: bool,
        send: ChunkSender,
        wake: Callable[[], None] | None = None,
        total_samples: int | None = None,
        on_progress: Callable[[AudioStream], object] | None = None,
        on_exit: Callable[[AudioStream], object] | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.realtime = realtime
        #: Samples in the whole source, or ``None`` for an iterable of chunks.
        self.total_samples = total_samples
        self._chunks = chunks
        self._send = send
        self._wake = wake
        self._on_progress = on_progress
        self._on_exit = on_exit
        self._id = next(_stream_ids)
        # Called by stop(), to wake a source blocked in next() (a microphone).  Guarded by _lock.
        self._stop_callbacks: list[Callable[[], object]] = []

        # Set by stop(); the pacing waits and the outbox wait end on it.
        self._stop = threading.Event()
        # Set when run() has returned, whatever the reason.
        self._done = threading.Event()
        # _lock guards the progress fields below (read by other threads).
        self._lock = threading.Lock()
        self._message_ids: list[str] = []
        self._samples_sent = 0
        self._error: BaseException | None = None
        # The background thread, when started with start(): runs run(); blocks in
        # the pacing wait (on _stop), in the outbox wait or in the source's next();
        # exits at the end of the source, on stop(), on close() or on an error.
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        if not self.done:
            status = "running"
        elif self.error is not None:
            status = "failed"
        else:
            status = "stopped" if self.stopped else "done"
        return (
            f"<AudioStream #{self._id} {status} chunks_sent={self.chunks_sent} "
            f"seconds_sent={self.seconds_sent:.2f}>"
        )

    # -------------------------------------------------------------- progress

    @property
    def message_ids(self) -> list[str]:
        """The ids of the chunks sent so far, in order (a copy)."""
        with self._lock:
            return list(self._message_ids)

    @property
    def chunks_sent(self) -> int:
        """How many chunks were sent so far."""
        with self._lock:
            return len(self._message_ids)

    @property
    def seconds_sent(self) -> float:
        """Seconds of audio sent so far."""
        with self._lock:
            return self._samples_sent / self.sample_rate

    @property
    def total_seconds(self) -> float | None:
        """Seconds of audio in the whole source, or ``None`` for an iterable of chunks."""
        if self.total_samples is None:
            return None
        return self.total_samples / self.sample_rate

    @property
    def done(self) -> bool:
        """True once the stream ended: finished, stopped or failed."""
        return self._done.is_set()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called (or the client closed)."""
        return self._stop.is_set()

    @property
    def error(self) -> BaseException | None:
        """What ended the stream early, if anything (see the class docstring)."""
        with self._lock:
            return self._error

    # -------------------------------------------------------------- control

    def stop(self, timeout: float | None = 1.0) -> None:
        """Stop sending after the chunk in flight; wait up to *timeout* for a background thread.

        Chunks already sent stay sent.  Safe from any thread, and more than once.
        """
        with self._lock:
            self._stop.set()
            callbacks = list(self._stop_callbacks)
        if self._wake is not None:
            self._wake()
        for callback in callbacks:
            callback()
        thread = self._thread
        if (
            timeout != 0
            and thread is not None
            and thread is not threading.current_thread()
            and thread.ident is not None
        ):
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("audio stream thread %s did not stop in %ss", thread.name, timeout)

    def add_stop_callback(self, callback: Callable[[], object]) -> None:
        """Have :meth:`stop` call *callback* (at once if already stopped).

        For a source whose ``next()`` blocks, such as a microphone: the
        callback makes it return, so the stream ends without waiting for data.
        """
        with self._lock:
            stopped = self._stop.is_set()
            if not stopped:
                self._stop_callbacks.append(callback)
        if stopped:
            callback()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the stream ended; return :attr:`done`.  Check :attr:`error` after."""
        return self._done.wait(timeout)

    # -------------------------------------------------------------- running

    def start(self) -> None:
        """Run the stream on a background thread (named ``avatar-im-audio-N``)."""
        thread = threading.Thread(
            target=self._run_in_thread, name=f"avatar-im-audio-{self._id}", daemon=True
        )
        self._thread = thread
        thread.start()

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except Exception as exc:  # kept in .error; a source's own error (not ours) lands here too
            logger.warning("audio stream #%d failed: %r", self._id, exc)

    def run(self) -> None:
        """Send every chunk on this thread, paced if :attr:`realtime`; raise what ended it."""
        try:
            self._send_all()
        except Exception as exc:
            sent = self.chunks_sent
            error: Exception = exc
            if sent:
                error = AudioStreamError(
                    f"the audio stream stopped after {sent} chunk(s) "
                    f"({self.seconds_sent:.2f} s) were sent: {exc}",
                    chunks_sent=sent,
                    message_ids=self.message_ids,
                )
                error.__cause__ = exc
            with self._lock:
                self._error = error
            if error is exc:
                raise
            raise error from exc
        finally:
            self._done.set()
            if self._on_exit is not None:
                self._on_exit(self)

    def _send_all(self) -> None:
        rate = self.sample_rate
        stop = self._stop
        start: float | None = None
        samples_before = 0
        iterator: Iterator[object] = iter(self._chunks)
        try:
            while not stop.is_set():
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                pcm = chunk_to_pcm(item)
                if not pcm:
                    continue
                if self.realtime:
                    now = time.monotonic()
                    if start is None:
                        start = now
                    delay = due_time(start, samples_before, rate) - now
                    if delay > 0 and stop.wait(delay):
                        break
                message_id = self._send(pcm, stop)
                if message_id is None:
                    break
                samples = len(pcm) // BYTES_PER_SAMPLE
                samples_before += samples
                with self._lock:
                    self._message_ids.append(message_id)
                    self._samples_sent += samples
                self._progress()
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):  # a generator: let it release its resources (a microphone)
                close()

    def _progress(self) -> None:
        callback = self._on_progress
        if callback is None:
            return
        try:
            callback(self)
        except Exception:
            logger.exception("on_progress callback %r raised; the stream goes on", callback)
