"""Live input: stream a microphone with ``sounddevice`` (the ``audio`` extra).

:class:`Microphone` is an iterable of 16-bit mono PCM chunks captured from an
input device, ready for :meth:`AvatarIM.stream_audio`; :func:`stream_microphone`
starts that on a background thread, for a Jupyter cell::

    stream = stream_microphone(client)      # returns at once; the avatar listens
    ...
    stream.stop()                           # in a later cell (client.close() also stops it)

and from a script (blocks until Ctrl-C, ``mic.stop()`` or *seconds*)::

    with Microphone(sample_rate=16000, seconds=10) as mic:
        client.stream_audio(mic, realtime=False)

The device is opened by a *stream factory*: ``sounddevice.RawInputStream`` by
default, imported lazily (never at module import time); tests pass a fake.
A factory is called as ``factory(samplerate=..., channels=1, dtype="int16",
blocksize=..., device=..., callback=...)`` and returns an object with
``start()``, ``stop()`` and ``close()``; it calls ``callback(indata, frames,
time, status)`` on its own thread with each block of samples.
"""

from __future__ import annotations

import collections
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from .audio import BYTES_PER_SAMPLE, DEFAULT_CHUNK_MS, EXTRA_HINT, check_chunk_ms, chunk_samples
from .exceptions import AudioDeviceError, InvalidArgumentError, InvalidArgumentTypeError

if TYPE_CHECKING:
    from .audio import AudioStream
    from .client import AvatarIM

__all__ = ["InputStream", "Microphone", "StreamFactory", "stream_microphone"]

logger = logging.getLogger(__name__)


class InputStream(Protocol):
    """What a stream factory returns (``sounddevice.RawInputStream`` fits)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


#: Opens an input device; see the module docstring for how it is called.
StreamFactory = Callable[..., InputStream]


def _sounddevice_stream(**kwargs: Any) -> InputStream:
    """The default factory: ``sounddevice.RawInputStream(**kwargs)``."""
    try:
        sounddevice = importlib.import_module("sounddevice")
    except (ImportError, OSError) as exc:  # OSError: the PortAudio library is missing
        raise AudioDeviceError(
            f"the microphone needs the 'audio' extra ({EXTRA_HINT}) and the PortAudio "
            f"library: {exc}"
        ) from exc
    try:
        stream: InputStream = sounddevice.RawInputStream(**kwargs)
    except Exception as exc:  # sounddevice.PortAudioError, ValueError for a bad device
        raise AudioDeviceError(f"cannot open the microphone: {exc}") from exc
    return stream


class Microphone:
    """An input device as an iterable of 16-bit mono PCM chunks of *chunk_ms* each.

    Iterating opens the device (if :meth:`open` was not called) and closes it
    when the iteration ends: after *seconds* of audio, on :meth:`stop`, or
    when the consumer stops (``stream_audio`` closes the iterator).  Blocks
    of samples wait in a bounded buffer (*max_buffer* chunks); when the
    consumer falls that far behind, the oldest are dropped and counted in
    :attr:`overruns`.  No data for *read_timeout* seconds raises
    :class:`AudioDeviceError`.

    :meth:`pause` drops what the device captures (counted in
    :attr:`blocks_paused`) until :meth:`resume`: the stream sends nothing
    meanwhile and the device stays open; around :meth:`AvatarIM.interrupt`
    (with ``stop_streams=False``), so the avatar does not hear the room while
    it is being interrupted.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        chunk_ms: float = DEFAULT_CHUNK_MS,
        seconds: float | None = None,
        device: int | str | None = None,
        stream_factory: StreamFactory | None = None,
        max_buffer: int = 250,
        read_timeout: float = 2.0,
    ) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
            raise InvalidArgumentTypeError("sample_rate must be an int")
        if not 8000 <= sample_rate <= 192000:
            raise InvalidArgumentError(f"sample_rate must be 8000..192000 Hz, got {sample_rate}")
        chunk_ms = check_chunk_ms(chunk_ms)
        if seconds is not None and (isinstance(seconds, bool) or not seconds > 0):
            raise InvalidArgumentError(f"seconds must be > 0 or None, got {seconds!r}")
        if stream_factory is not None and not callable(stream_factory):
            raise InvalidArgumentTypeError("stream_factory must be callable or None")
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise InvalidArgumentError(f"max_buffer must be an int >= 1, got {max_buffer!r}")
        if not read_timeout > 0:
            raise InvalidArgumentError(f"read_timeout must be > 0, got {read_timeout!r}")
        self.sample_rate = sample_rate
        self.chunk_ms = chunk_ms
        self.seconds = seconds
        self.device = device
        self.read_timeout = float(read_timeout)
        self._blocksize = chunk_samples(chunk_ms, sample_rate)
        self._factory: StreamFactory = stream_factory or _sounddevice_stream
        self._max_buffer = max_buffer

        # _ready guards the fields below; the device's callback thread appends to
        # _blocks and notifies, the iterating thread waits on it.
        self._ready = threading.Condition()
        self._blocks: collections.deque[bytes] = collections.deque()
        self._stopped = False
        self._paused = False
        self._iterating = False
        self._stream: InputStream | None = None
        #: Blocks dropped because the consumer fell behind.
        self.overruns = 0
        #: Blocks received from the device.
        self.blocks_captured = 0
        #: Blocks dropped because the microphone was paused.
        self.blocks_paused = 0

    def __repr__(self) -> str:
        state = "open" if self._stream is not None else "closed"
        return f"<Microphone {self.sample_rate} Hz {self.chunk_ms:g} ms {state}>"

    # ------------------------------------------------------------ the device

    def open(self) -> None:
        """Open and start the device now (iterating does it otherwise); raise if it cannot."""
        with self._ready:
            if self._stream is not None:
                return
            self._stopped = False
        stream = self._factory(
            samplerate=self.sample_rate,
            channels=1,
            dtype="int16",
            blocksize=self._blocksize,
            device=self.device,
            callback=self._callback,
        )
        try:
            stream.start()
        except Exception as exc:
            stream.close()
            raise AudioDeviceError(f"cannot start the microphone: {exc}") from exc
        with self._ready:
            self._stream = stream
        logger.info("microphone open: %d Hz, %d-sample blocks", self.sample_rate, self._blocksize)

    def stop(self) -> None:
        """End the iteration (after the chunk being read); the device closes with it.

        Safe from any thread, and from a callback.
        """
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    def pause(self) -> None:
        """Drop what the device captures until :meth:`resume`; what is buffered goes too."""
        with self._ready:
            self._paused = True
            self.blocks_paused += len(self._blocks)
            self._blocks.clear()

    def resume(self) -> None:
        """Pass captured audio on again (after :meth:`pause`)."""
        with self._ready:
            self._paused = False
            self._ready.notify_all()

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in force."""
        return self._paused

    def close(self) -> None:
        """Stop and close the device now."""
        self.stop()
        with self._ready:
            stream, self._stream = self._stream, None
            self._blocks.clear()
        if stream is not None:
            try:
                stream.stop()
            finally:
                stream.close()
            logger.info("microphone closed")

    def __enter__(self) -> Microphone:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """Runs on the device's thread: buffer the block, never block or raise."""
        if status:
            logger.debug("microphone status: %s", status)
        try:
            block = bytes(indata)
        except Exception:  # pragma: no cover - a broken device buffer
            logger.exception("unreadable microphone block")
            return
        with self._ready:
            if self._paused:
                self.blocks_paused += 1
                return
            if len(self._blocks) >= self._max_buffer:
                self._blocks.popleft()
                self.overruns += 1
                if self.overruns == 1 or self.overruns % 100 == 0:
                    logger.warning("microphone buffer full: dropped %d block(s)", self.overruns)
            self._blocks.append(block)
            self.blocks_captured += 1
            self._ready.notify_all()

    # ------------------------------------------------------------ iterating

    def __iter__(self) -> Iterator[bytes]:
        with self._ready:
            if self._iterating:
                raise InvalidArgumentError("this Microphone is already being iterated")
            self._iterating = True
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        try:
            self.open()
            left = None if self.seconds is None else round(self.seconds * self.sample_rate)
            left_bytes = None if left is None else left * BYTES_PER_SAMPLE
            while left_bytes is None or left_bytes > 0:
                block = self._next_block()
                if block is None:
                    return
                if left_bytes is not None:
                    block = block[:left_bytes]
                    left_bytes -= len(block)
                if block:
                    yield block
        finally:
            with self._ready:
                self._iterating = False
            self.close()

    def _next_block(self) -> bytes | None:
        """The next block, or ``None`` once stopped; raise after *read_timeout* of silence.

        While paused, no block is expected: the silence timer starts again on resume.
        """
        deadline = time.monotonic() + self.read_timeout
        with self._ready:
            while not self._blocks and not self._stopped:
                if self._paused:
                    self._ready.wait(self.read_timeout)
                    deadline = time.monotonic() + self.read_timeout
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AudioDeviceError(f"no audio from the microphone for {self.read_timeout}s")
                self._ready.wait(left)
            if self._stopped:
                return None
            return self._blocks.popleft()


def stream_microphone(
    client: AvatarIM,
    *,
    seconds: float | None = None,
    chunk_ms: float = DEFAULT_CHUNK_MS,
    device: int | str | None = None,
    stream_factory: StreamFactory | None = None,
    on_progress: Callable[[AudioStream], object] | None = None,
) -> AudioStream:
    """Stream the microphone to *client*'s session on a background thread; return the handle.

    The device opens now (so a missing one raises here) at the session's
    sample rate.  ``stream.stop()`` or ``client.close()`` stops the stream
    and closes the device; so does the end of *seconds*.
    """
    # The session's rate decides the device's; the client has no public getter for it yet.
    options = client._connection.locked(lambda p: p.session_options)
    microphone = Microphone(
        sample_rate=16000 if options is None else options.sample_rate,
        chunk_ms=chunk_ms,
        seconds=seconds,
        device=device,
        stream_factory=stream_factory,
    )
    microphone.open()
    try:
        stream = client.stream_audio(
            microphone, realtime=False, background=True, on_progress=on_progress
        )
    except BaseException:
        microphone.close()
        raise
    stream.add_stop_callback(microphone.stop)
    return stream
