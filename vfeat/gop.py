"""Which packets a decoder can skip without changing a single pixel of the frames we keep.

Sampling at 1 fps from 25 fps video keeps one frame in 25, yet a plain decoder decodes all of them. Two
kinds of packet can be left out of the decoder safely, and the probe pass (which reads every packet's
header anyway) finds both:

- **Restart points**: keyframes after which no frame refers to anything before them (H.264 IDR, HEVC IRAP,
  VP8/VP9/AV1 keyframes, every frame of an intra-only codec). Once every wanted frame up to the next
  restart point has come out, the rest of the GOP is dropped; a GOP that holds no wanted frame is
  dropped whole. Keyframes that are not restart points (an H.264 I-frame of an open GOP) never end a GOP.
- **Disposable frames**: pictures no other picture refers to (H.264 ``nal_ref_idc == 0``, or a demuxer's
  disposable flag). An unwanted one is dropped wherever it is.

Codecs not listed here get no skipping: every packet is decoded, as before.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np

#: Codecs whose keyframe packets are restart points as flagged by the demuxer.
_KEYFRAME_IS_RESTART = {"vp8", "vp9", "av1"}


@dataclass(frozen=True)
class SkipPoints:
    """Per-video skip facts from the probe: pts of restart points and of disposable frames (sorted)."""

    restart_pts: np.ndarray
    disposable_pts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class PtsSet:
    """A set of pts as one sorted int64 array and a bitmap: 9 bytes a member where a Python set of ints
    takes about 100. A 2-hour video has some 200,000 packets, and in "all frames" mode every one is wanted,
    so the per-packet bookkeeping must not grow with Python objects. (``bisect`` on an ``array``: a lookup
    costs about 0.3 us, several times less than ``np.searchsorted`` on one value.)"""

    def __init__(self, pts) -> None:
        self.pts = array("q", np.unique(np.asarray(pts, np.int64)).tobytes())
        self.present = bytearray(b"\x01") * len(self.pts)
        self.count = len(self.pts)

    def _index(self, pts: int) -> int:
        i = bisect_left(self.pts, pts)
        return i if i < len(self.pts) and self.pts[i] == pts else -1

    def __contains__(self, pts: int) -> bool:
        i = self._index(pts)
        return i >= 0 and bool(self.present[i])

    def __len__(self) -> int:
        return self.count

    def discard(self, pts: int) -> None:
        i = self._index(pts)
        if i >= 0 and self.present[i]:
            self.present[i] = 0
            self.count -= 1

    def sorted(self) -> np.ndarray:
        """Every pts, present or not (sorted)."""
        return np.frombuffer(self.pts, np.int64)

    def members(self) -> np.ndarray:
        return self.sorted()[np.frombuffer(self.present, bool)]


class PacketClassifier:
    """Looks at one stream's packets (flags and NAL unit headers, no decoding) and collects
    :class:`SkipPoints`; ``result()`` is ``None`` for codecs we do not know to be safe."""

    def __init__(self, stream) -> None:
        ctx = stream.codec_context
        self.codec = getattr(ctx.codec, "canonical_name", None) or ctx.name  # "av1", not the decoder "libdav1d"
        self.intra_only = bool(getattr(ctx.codec, "intra_only", False))
        extradata = bytes(ctx.extradata or b"")
        self.length_size = _nal_length_size(self.codec, extradata)
        self.known = self.intra_only or self.codec in _KEYFRAME_IS_RESTART or self.codec in ("h264", "hevc")
        self.restart = array("q")
        self.disposable = array("q")

    def add(self, packet, pts: int) -> None:
        if not self.known:
            return
        if packet.pts is None:  # frames would be matched by dts: too loose to skip anything safely
            self.known = False
            return
        if packet.is_keyframe and (self.intra_only or self.codec in _KEYFRAME_IS_RESTART):
            self.restart.append(pts)
            return
        if getattr(packet, "is_disposable", False):
            self.disposable.append(pts)
            return
        if self.codec == "h264":
            self._add_h264(bytes(packet), pts)
        elif self.codec == "hevc":
            self._add_hevc(bytes(packet), pts)

    def _add_h264(self, data: bytes, pts: int) -> None:
        # every slice of the packet (both fields of an interlaced frame): IDR in any -> restart point;
        # nal_ref_idc 0 in all -> nothing refers to this picture
        slices = [h[0] for h in _nal_headers(data, self.length_size) if h and 1 <= h[0] & 0x1F <= 5]
        if any(h & 0x1F == 5 for h in slices):
            self.restart.append(pts)
        elif slices and all((h >> 5) & 0x3 == 0 for h in slices):
            self.disposable.append(pts)

    def _add_hevc(self, data: bytes, pts: int) -> None:
        # IRAP pictures (BLA, IDR, CRA: NAL types 16-21); trailing pictures never refer to the RASL pictures
        # of a CRA, so what precedes a CRA may be dropped. Sub-layer non-reference pictures are not used:
        # a higher temporal layer may still refer to them.
        for header in _nal_headers(data, self.length_size):
            if header and (header[0] >> 1) & 0x3F <= 31:
                if 16 <= (header[0] >> 1) & 0x3F <= 21:
                    self.restart.append(pts)
                return

    def result(self) -> SkipPoints | None:
        if not self.known:
            return None
        return SkipPoints(np.unique(np.asarray(self.restart, np.int64)), np.unique(np.asarray(self.disposable, np.int64)))


def _nal_length_size(codec: str, extradata: bytes) -> int | None:
    """NAL length prefix size of MP4/MKV-style packets (avcC / hvcC extradata); ``None``: Annex-B start codes."""
    if codec == "h264" and len(extradata) >= 5 and extradata[0] == 1:
        return (extradata[4] & 0x3) + 1
    if codec == "hevc" and len(extradata) >= 23 and extradata[0] == 1:
        return (extradata[21] & 0x3) + 1
    return None


def _nal_headers(data: bytes, length_size: int | None):
    if length_size:
        i = 0
        while i + length_size < len(data):
            size = int.from_bytes(data[i : i + length_size], "big")
            start = i + length_size
            if size <= 0 or start + size > len(data):
                return
            yield data[start : start + 2]
            i = start + size
        return
    i = data.find(b"\x00\x00\x01")
    while i >= 0 and i + 3 < len(data):
        yield data[i + 3 : i + 5]
        i = data.find(b"\x00\x00\x01", i + 3)


class GopSkipper:
    """Decides, packet by packet in decode order, whether a packet must go to the decoder.

    GOPs are the pts ranges between restart points (GOP 0 is whatever precedes the first one);
    ``remaining[g]`` counts the wanted frames of GOP ``g`` that have not yet come out of the decoder. The
    decoder gets the packets of the current GOP while it, or an earlier GOP, still owes a wanted frame:
    a wanted leading picture of the next GOP (pts below its restart point) counts towards the earlier GOP,
    so the packets it comes out of are still decoded. Everything else is dropped.
    """

    def __init__(self, points: SkipPoints, wanted: np.ndarray) -> None:
        self.restart_pts = np.asarray(points.restart_pts, np.int64)
        self.restart = PtsSet(self.restart_pts)
        self.disposable = PtsSet(points.disposable_pts)
        self.wanted = PtsSet(wanted)
        gops = self._gop_of(self.wanted.sorted())
        self.remaining = np.bincount(gops, minlength=len(self.restart_pts) + 1)
        self.first_unfinished = 0
        self._advance()
        self.current_gop = 0

    def _gop_of(self, pts: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.restart_pts, pts, side="right")

    def _advance(self) -> None:
        while self.first_unfinished < len(self.remaining) and self.remaining[self.first_unfinished] == 0:
            self.first_unfinished += 1

    def send(self, pts: int) -> bool:
        """Whether the packet with this pts (in decode order) goes to the decoder."""
        if pts in self.restart:
            self.current_gop = int(self._gop_of(np.asarray([pts]))[0])
        gop_done = self.first_unfinished > self.current_gop  # this GOP and every earlier one owe nothing
        return not gop_done and not (pts in self.disposable and pts not in self.wanted)

    def came_out(self, pts: int) -> None:
        """A wanted frame left the decoder (call once per wanted pts)."""
        self.remaining[int(self._gop_of(np.asarray([pts]))[0])] -= 1
        self._advance()
