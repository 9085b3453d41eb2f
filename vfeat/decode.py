"""Open a video, measure its frames, and stream the selected ones, upright and resized at decode time.

Two passes over the file, both streaming: :func:`probe` demuxes packets without decoding them (cheap)
to learn every frame's true presentation time, the frame count and the measured duration; the sampler
then picks frames by those times, and :func:`decode_selected` decodes and converts only what was picked.
Frames travel with their own timestamps: nothing here assumes a constant frame rate.
"""

from __future__ import annotations

import logging
import os
from array import array
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from vfeat.errors import DecodeError
from vfeat.gop import GopSkipper, PacketClassifier, PtsSet, SkipPoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What the store records per video. ``width``/``height`` are as displayed (rotation applied);
    ``duration_s`` is measured (first frame's time to the end of the last frame), ``header_duration_s``
    is what the container claims."""

    path: str
    width: int
    height: int
    fps: float  # native average frame rate (frames / measured duration when the header has none)
    duration_s: float
    num_frames: int
    start_time_s: float  # presentation time of the first frame in the file's clock (MPEG-TS starts > 0)
    rotation: int  # degrees counter-clockwise a player rotates the decoded picture
    codec: str
    pix_fmt: str
    header_duration_s: float | None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Probe:
    info: VideoInfo
    timestamps_s: np.ndarray  # float64 [num_frames], sorted, from the first frame (first is 0.0)
    #: the same in milliseconds, from the integer pts with one rounding: whole milliseconds stay whole
    #: (1400.0, where seconds times 1000 gives 1400.0000000000002)
    timestamps_ms: np.ndarray
    pts: np.ndarray  # int64 [num_frames], the stream's own pts values, same order
    skip: SkipPoints | None = None  # packets the decoder may leave out (None: decode every packet)
    #: set where the file's timestamps cannot tell the decoder's pictures apart (H.264 with B-frames in AVI,
    #: see :func:`_times_by_output`): the k-th picture out of the decoder is the one at ``pts[k]``. Pass it to
    #: :func:`decode_selected`.
    shown_pts: np.ndarray | None = None


@dataclass(frozen=True)
class Resize:
    """Decode-time resize: the short side to ``short_side`` (the long side truncated as torchvision
    does), then a centre crop of ``crop`` x ``crop``. ``None`` keeps the frame as it is."""

    short_side: int
    crop: int
    interpolation: str = "BICUBIC"
    #: open_clip's resize modes: "shortest" (as above), "squash" (straight to ``crop`` x ``crop``, the aspect
    #: ratio not kept: SigLIP, DFN, PE), "longest" (the long side to ``crop``, then padded with black)
    mode: str = "shortest"


#: swscale flags added to every resize: full-resolution chroma when converting 4:2:0 to RGB (without it,
#: colours smear at CLIP input sizes: centred cosine to open_clip's PIL path drops to ~0.75-0.94) and
#: accurate rounding.
SWS_FULL_CHR_H_INT = 8192
SWS_ACCURATE_RND = 262144
_SWS_METHOD = {"FAST_BILINEAR": 1, "BILINEAR": 2, "BICUBIC": 4, "POINT": 16, "AREA": 32, "LANCZOS": 512}


def _open(path: str, hwaccel: str | None = None):
    """Open ``path``; with ``hwaccel`` ("cuda": NVDEC) the decoder runs on that device where it can
    (frames come back to system memory, and codecs the device lacks fall back to software)."""
    import av

    # libav's own messages ("non-existing PPS", ...) off: torchvision turns them on at import, and every
    # problem reaches the user as one DecodeError line naming the file instead
    av.logging.set_level(None)
    if hwaccel is not None:
        opened = _open_on_device(path, hwaccel)
        if opened is not None:
            return opened
    try:
        if "://" in path and not path.startswith(("http://", "https://", "rtsp://", "file://")):
            from vfeat.store.fs import open_binary

            return av.open(open_binary(path))
        return av.open(path.removeprefix("file://"))
    except FileNotFoundError:
        raise DecodeError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DecodeError(f"{path}: is a directory, not a video") from None
    except av.error.InvalidDataError:
        raise DecodeError(f"{path}: {_unreadable_reason(path)}") from None
    except av.error.FFmpegError as exc:
        raise DecodeError(f"{path}: cannot open ({exc.strerror or exc})") from None


_device_unusable: set[str] = set()  # hardware decoders that failed to start in this process


def _open_on_device(path: str, hwaccel: str):
    """The container with a hardware decoder, or None (then the caller opens it for software decoding,
    which also reports what is wrong with the file). A device that cannot start is reported once per
    process and not tried again."""
    import av
    from av.codec.hwaccel import HWAccel

    if hwaccel in _device_unusable or "://" in path.removeprefix("file://"):
        return None
    try:
        return av.open(path.removeprefix("file://"), hwaccel=HWAccel(device_type=hwaccel, allow_software_fallback=True))
    except (FileNotFoundError, IsADirectoryError, av.error.InvalidDataError):
        return None
    except av.error.FFmpegError as exc:
        _device_unusable.add(hwaccel)
        log.warning("hardware decoding (%s) is unavailable in this process (%s): decoding on the CPU",
                    hwaccel, exc.strerror or exc)
        return None


def hardware_decoder() -> str | None:
    """The hardware decoder this process uses (``VFEAT_HWACCEL``, set per decode worker by the
    pipeline's ``--hwaccel``), or None for software decoding."""
    value = os.environ.get("VFEAT_HWACCEL", "").strip().lower()
    return None if value in ("", "none", "cpu") else value


def check_hwaccel(hwaccel: str) -> None:
    """Fail early, naming the reason, when ``hwaccel`` cannot work here."""
    from av.codec.hwaccel import hwdevices_available

    from vfeat.errors import InputError

    available = hwdevices_available()
    if hwaccel not in available:
        raise InputError(f"Invalid --hwaccel ({hwaccel}). This PyAV's FFmpeg supports: {', '.join(available) or 'none'}.")
    if hwaccel == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("--hwaccel cuda decodes on an NVIDIA GPU (NVDEC), and no CUDA GPU is visible here.")


def _unreadable_reason(path: str) -> str:
    """Why ffmpeg found no readable container: empty, a cut-short MP4/MOV (its index, the moov atom, is
    written last), or not a video at all."""
    import os

    local = path.removeprefix("file://")
    if "://" not in local and os.path.isfile(local):
        if os.path.getsize(local) == 0:
            return "empty file (0 bytes)"
        with open(local, "rb") as handle:
            head = handle.read(12)
        if head[4:8] in (b"ftyp", b"mdat", b"moov", b"wide", b"free"):
            return "truncated or incomplete MP4/MOV (no moov atom: the file was cut short or never finished)"
    return "not a video file (no container format recognised)"


_ATTACHED_PIC = 1024  # AV_DISPOSITION_ATTACHED_PIC


def _video_stream(container, path: str):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        what = f"only {', '.join(kinds)} streams" if kinds else "no streams"
        raise DecodeError(f"{path}: no video stream ({what})")
    # the picture, not cover art: a still image stored as a video stream (disposition attached_pic) is skipped
    moving = [s for s in container.streams.video if not int(s.disposition) & _ATTACHED_PIC]
    stream = (moving or list(container.streams.video))[0]
    if stream.codec_context is None or not stream.codec_context.name:
        raise DecodeError(f"{path}: unsupported video codec")
    return stream


def probe(path: str) -> Probe:
    """Demux every video packet (no decoding) to get the true frame times. Raises :class:`DecodeError`
    naming the file for anything unreadable."""
    import av

    container = _open(path)
    try:
        stream = _video_stream(container, path)
        time_base = stream.time_base
        pts_list = array("q")  # 8 bytes a packet: a 2-hour video has some 200,000
        max_pts, last_duration = None, 0
        rotation: int | None = None
        first_shown: int | None = None  # pts of the first picture the decoder outputs
        starts_with_key: bool | None = None
        classifier = PacketClassifier(stream)
        packets_read = 0
        untimed = 0  # pictures without a timestamp: a raw elementary stream (.h264) has none
        packets_to_first_picture = 0  # the decoder's delay, plus one: how many packets it took before a picture came out
        dts_list = array("q")  # for AVI (see _times_by_output)
        stamps_increase = True  # in file order, as decode times do and presentation times of B-frames do not
        try:
            for packet in container.demux(stream):
                if packet.pts is not None or packet.dts is not None:
                    packets_read += 1  # a sample of the file, even an empty one (not the demuxer's flush packet)
                if packet.size == 0:
                    continue  # flush packet
                if starts_with_key is None:
                    starts_with_key = bool(packet.is_keyframe)
                if rotation is None:  # hidden frames too: the decoder needs them as references
                    packets_to_first_picture += 1
                    rotation, first_shown = _first_picture(packet, path)
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:
                    untimed += 1
                    continue
                if packet.is_discard:
                    continue  # a frame an edit list hides
                if pts_list and stamp <= pts_list[-1]:
                    stamps_increase = False
                dts_list.append(int(packet.dts if packet.dts is not None else stamp))
                pts_list.append(int(stamp))
                classifier.add(packet, int(stamp))
                if max_pts is None or stamp > max_pts:
                    max_pts, last_duration = int(stamp), int(packet.duration or 0)
        except av.error.FFmpegError as exc:
            if not pts_list:
                raise DecodeError(f"{path}: cannot read packets ({exc.strerror or exc})") from None
        if not pts_list and untimed:
            raise DecodeError(f"{path}: no frame timestamps (a raw {stream.codec_context.name} stream has none: vfeat reads "
                              f"video files such as MP4, MKV, AVI)")
        if not pts_list:
            raise DecodeError(f"{path}: video stream has no frames (empty or truncated)")
        _refuse_truncated(path, container, stream, packets_read)
        pts = np.unique(np.asarray(pts_list, dtype=np.int64))
        if not starts_with_key and first_shown is not None and (pts >= first_shown).any():
            # a stream cut mid-GOP (a recording or segment that starts between keyframes): what comes before
            # its first decodable picture refers to frames that are not in the file, and no player shows it
            pts = pts[pts >= first_shown]
        # a decoder that reorders pictures (known once it has decoded the first), and packet times that are not
        # presentation times (those of B-frames would not increase in file order): time pictures by output order
        decode_times = np.asarray(dts_list, dtype=np.int64)
        by_output = (container.format.name in DECODE_TIME_FORMATS and bool(stream.codec_context.has_b_frames)
                     and stamps_increase and len(pts) == len(decode_times) and bool(np.all(np.diff(decode_times) > 0)))
        if by_output:
            delay = min(max(packets_to_first_picture - 1, 1), 16)  # pictures held back; H.264 holds 16 at most
            pts = _times_by_output(decode_times, delay, last_duration)
        start_pts = int(pts[0])
        if container.format.name in DECODE_TIME_FORMATS and not by_output and not stream.codec_context.has_b_frames:
            start_pts -= _guessed_delay(np.asarray(pts_list, dtype=np.int64), decode_times)
        info = _info(path, container, stream, pts, last_duration, rotation or 0, start_pts)
    finally:
        container.close()
    offsets = pts - pts[0]
    seconds = offsets.astype(np.float64) * float(time_base)
    milliseconds = (offsets * (1000 * time_base.numerator)).astype(np.float64) / time_base.denominator
    if by_output:  # the packets' times are not their pictures' times: no skipping by them
        return Probe(info, seconds, milliseconds, pts, skip=None, shown_pts=pts)
    return Probe(info, seconds, milliseconds, pts, classifier.result())


#: containers without presentation times: a packet's time is its decode time
DECODE_TIME_FORMATS = frozenset({"avi"})


def _guessed_delay(pts: np.ndarray, dts: np.ndarray) -> int:
    """The reorder delay the demuxer assumed when it made up presentation times for a stream in a
    decode-time container whose decoder reorders nothing (H.264 without B-frames in AVI: every time one
    frame after its decode time). Its pictures are shown at their decode times, as ffmpeg's best-effort times
    say; the made-up times stay the ones frames are matched by, only the start time is corrected."""
    if len(pts) != len(dts) or not len(pts):
        return 0
    lead = pts - dts
    return int(lead[0]) if lead[0] > 0 and bool(np.all(lead == lead[0])) else 0


def _times_by_output(dts: np.ndarray, delay: int, last_duration: int) -> np.ndarray:
    """Presentation times of the pictures in the order the decoder outputs them, for a codec that reorders
    pictures (H.264 with B-frames) in a container that stores decode times only (AVI). The demuxer's guessed
    times follow file order, so the decoder would give each picture another packet's time; but the encoder
    wrote decode times as the presentation times shifted back by its reorder delay, which is the decoder's:
    the k-th picture out is shown at the decode time of the packet ``delay`` places later (what ffmpeg's
    best-effort timestamps are), and the last ``delay`` pictures follow at the last frame's duration."""
    delay = max(0, min(delay, len(dts) - 1))
    step = last_duration or (int(dts[-1] - dts[-2]) if len(dts) > 1 else 1) or 1
    tail = dts[-1] + step * np.arange(1, delay + 1, dtype=np.int64)
    return np.concatenate([dts[delay:], tail])


def _refuse_truncated(path: str, container, stream, packets_read: int) -> None:
    """An MP4/MOV file cut short whose sample table (at its start: "faststart") still lists every frame: the
    packets stop early without an error, and what could be read would be stored as if it were the whole
    video. Only there is the count exact (AVI headers may be wrong, Matroska and MPEG-TS do not say)."""
    listed = int(stream.frames or 0)
    if "mov" in container.format.name and listed and packets_read < listed:
        declared = f" ({float(stream.duration * stream.time_base):.2f} s)" if stream.duration else ""
        raise DecodeError(f"{path}: truncated: the container lists {listed} frames{declared} but the file holds "
                          f"only {packets_read}")


def _info(path: str, container, stream, pts: np.ndarray, last_duration: int, rotation: int,
          start_pts: int) -> VideoInfo:
    time_base = float(stream.time_base)
    if last_duration <= 0:
        gaps = np.diff(pts)
        if len(gaps):
            last_duration = int(np.median(gaps))
        elif stream.average_rate:
            last_duration = int(round(1 / (float(stream.average_rate) * time_base)))
    duration_s = float((pts[-1] - pts[0] + last_duration) * time_base)
    header = None
    if stream.duration is not None:
        header = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        header = container.duration / 1e6
    measured = len(pts) / duration_s if duration_s > 0 else 0.0
    header_rate = float(stream.average_rate) if stream.average_rate else 0.0
    # the header's exact rational (30000/1001) where it agrees with the frames; a variable-rate file's header
    # rate is often a guess (Matroska: 25)
    rate = header_rate if header_rate and abs(header_rate - measured) <= 0.01 * measured else measured
    width, height = stream.codec_context.width, stream.codec_context.height
    if rotation % 180:
        width, height = height, width
    return VideoInfo(
        path=path,
        width=int(width),
        height=int(height),
        fps=rate,
        duration_s=duration_s,
        num_frames=int(len(pts)),
        start_time_s=float(start_pts * time_base),
        rotation=rotation,
        codec=stream.codec_context.name,
        pix_fmt=stream.codec_context.format.name if stream.codec_context.format else "",
        header_duration_s=header,
    )


def _first_picture(packet, path: str) -> tuple[int | None, int | None]:
    """Decode packets until the first picture comes out: its display rotation (PyAV exposes the display
    matrix on frames) and its pts; this also proves early that the codec can be decoded at all."""
    import av

    try:
        for frame in packet.decode():
            return int(round((frame.rotation or 0) / 90.0)) * 90 % 360, frame.pts
    except av.error.FFmpegError as exc:
        raise DecodeError(f"{path}: undecodable video ({exc.strerror or exc})") from None
    return None, None


def longest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Output (width, height) with the long side at ``size``, rounded as open_clip's ``ResizeKeepRatio``
    (``longest=1``) does; the centre crop then pads the short side to ``size`` with black."""
    ratio = max(width / size, height / size)
    return round(width / ratio), round(height / ratio)


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Output (width, height) with the short side at ``short_side``; the long side is truncated the way
    torchvision's Resize computes it, so crops line up with open_clip's own preprocessing."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def skipping_enabled() -> bool:
    """GOP and disposable-frame skipping is on unless ``VFEAT_DECODE_SKIP=0`` (for comparisons)."""
    return os.environ.get("VFEAT_DECODE_SKIP", "1") != "0"


@dataclass
class DecodeStats:
    packets_sent: int = 0
    packets_skipped: int = 0
    fallbacks: int = 0


def decode_selected(path: str, wanted_pts: np.ndarray, resize: Resize | None, skip: SkipPoints | None = None,
                    stats: DecodeStats | None = None, shown_pts: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the video and yield ``(pts, rgb uint8 [H, W, 3])`` once for each frame whose pts is in
    ``wanted_pts`` (:attr:`Probe.pts`), upright, resized and cropped at decode time. ``shown_pts``
    (:attr:`Probe.shown_pts`, where set): the k-th picture decoded is the one at ``shown_pts[k]``.

    With ``skip`` (from :func:`probe`), packets that cannot contribute to a wanted frame are not decoded
    (see :mod:`vfeat.gop`); the frames are the same. Should a wanted frame still not come out that way,
    the missing ones are decoded again from the start without skipping.
    """
    stats = stats if stats is not None else DecodeStats()
    wanted = PtsSet(wanted_pts)
    total = len(wanted)
    if skip is not None and skipping_enabled():
        try:
            for stamp, image in _decode(path, wanted.members(), resize, total, skip, stats, shown_pts):
                wanted.discard(stamp)
                yield stamp, image
        except DecodeError as exc:
            log.debug("%s", exc)
        if not wanted:
            return
        stats.fallbacks += 1
        log.warning("%s: %d frame(s) missing after skipping packets; decoding them again in full", path, len(wanted))
    yield from _decode(path, wanted.members(), resize, total, None, stats, shown_pts)


def _decode(path: str, wanted: np.ndarray, resize: Resize | None, total: int, skip: SkipPoints | None,
            stats: DecodeStats, shown_pts: np.ndarray | None) -> Iterator[tuple[int, np.ndarray]]:
    import av

    from av.video.reformatter import VideoReformatter

    pending = PtsSet(wanted)
    skipper = GopSkipper(skip, wanted) if skip is not None else None
    # one scaler for the whole video: ``frame.reformat`` builds a new one per frame, and setting up a
    # bicubic, accurate-rounding scaler costs more than using it (5.6 -> 2.3 ms a 720p frame)
    scaler = VideoReformatter()
    container = _open(path, hardware_decoder())
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        threads = int(os.environ.get("VFEAT_DECODE_THREADS", "0") or 0)
        if threads > 0:  # set per decode worker by the pipeline; 0: FFmpeg's default (a thread per core)
            stream.codec_context.thread_count = threads
        shown = 0  # pictures out of the decoder so far
        try:
            for packet in container.demux(stream):
                if skipper is not None and packet.size and packet.pts is not None and not skipper.send(int(packet.pts)):
                    stats.packets_skipped += 1
                    continue
                stats.packets_sent += 1
                for frame in packet.decode():
                    if shown_pts is not None:  # pictures come out in presentation order
                        stamp = shown_pts[shown] if shown < len(shown_pts) else None
                    else:
                        stamp = frame.pts if frame.pts is not None else frame.dts
                    shown += 1
                    if stamp is None or int(stamp) not in pending:
                        continue
                    stamp = int(stamp)
                    pending.discard(stamp)
                    if skipper is not None:
                        skipper.came_out(stamp)
                    quarter_turns = int(round((frame.rotation or 0) / 90.0)) % 4
                    yield stamp, _to_rgb(frame, quarter_turns, resize, scaler)
                if not pending:
                    break
        except av.error.FFmpegError as exc:
            done = total - len(pending)
            raise DecodeError(f"{path}: decoding failed after {done} of {total} frames ({exc.strerror or exc})") from None
    finally:
        container.close()
    if pending and skipper is None:
        raise DecodeError(f"{path}: truncated or corrupt: decoded {total - len(pending)} of {total} selected frames")


def _to_rgb(frame, quarter_turns: int, resize: Resize | None, scaler=None) -> np.ndarray:
    """``scaler``: a VideoReformatter kept for the whole video (a new one per call otherwise)."""
    if scaler is None:
        from av.video.reformatter import VideoReformatter

        scaler = VideoReformatter()
    src_w, src_h = frame.width, frame.height
    disp_w, disp_h = (src_h, src_w) if quarter_turns % 2 else (src_w, src_h)
    if resize is None:
        image = scaler.reformat(frame, format="rgb24").to_ndarray()
    else:
        if resize.mode == "squash":
            out_w = out_h = resize.crop
        elif resize.mode == "longest":
            out_w, out_h = longest_side_size(disp_w, disp_h, resize.crop)
        else:
            out_w, out_h = resized_size(disp_w, disp_h, resize.short_side)
        if quarter_turns % 2:
            out_w, out_h = out_h, out_w
        flags = _SWS_METHOD.get(resize.interpolation.upper(), 4) | SWS_FULL_CHR_H_INT | SWS_ACCURATE_RND
        image = scaler.reformat(frame, width=out_w, height=out_h, format="rgb24", interpolation=flags).to_ndarray()
    if quarter_turns:
        image = np.rot90(image, k=quarter_turns)
    if resize is not None:
        image = center_crop(image, resize.crop)
    return np.ascontiguousarray(image)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Centre crop as torchvision does (offsets rounded), padding with zeros if the image is smaller."""
    h, w = image.shape[:2]
    if h < size or w < size:
        padded = np.zeros((max(h, size), max(w, size), 3), dtype=image.dtype)
        top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
        padded[top : top + h, left : left + w] = image
        image, h, w = padded, padded.shape[0], padded.shape[1]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image[top : top + size, left : left + size]


def seconds_to_ms(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) * 1000.0


