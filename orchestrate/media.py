"""Decoding a clip once: the largest face of each frame and the mono audio track.

Video frames are read one at a time with OpenCV; each is reduced to its largest face crop
at once and dropped, so a worker's memory does not grow with the clip's length or
resolution. A still image (``image-folder``'s clips: a ``video_uri`` with an image
extension) is decoded as a one-frame track (``decode_image``). Without a detector
(``dataset.faces=given``) a frame is taken to be a face crop already: its centred square
is the face. The audio track is decoded with PyAV (which reads every container ingest meets:
mp4/AAC, flv/MP3, wav) and mixed to mono float32 at its native rate.

Bad input raises ``ExtractionError`` with a one-line reason: an unreadable, corrupt or
truncated file, a missing video or audio stream. A clip without faces or with silent audio
decodes fine: the extractors that need faces or sound raise for those, so the other
modality's extractors of the same clip still succeed.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import av
import cv2
import numpy as np

from orchestrate.datasets.base import Clip, is_image_uri
from orchestrate.extractors.base import AudioTrack, ClipMedia, ExtractionError, FaceTrack
from orchestrate.faces import FaceDetector, crop_face

# A stream that decodes to less than this share of the length its container declares was
# cut short: a truncated download or copy. (Healthy files decode to 98-102%.)
MIN_DECODED_SHARE = 0.9


def decode_clip(
    clip: Clip,
    *,
    need_video: bool,
    need_audio: bool,
    detector: FaceDetector | None,
    crop_size: int = 128,
    frame_stride: int = 1,
    storage_options: dict | None = None,
) -> ClipMedia:
    """Decode ``clip`` once into face crops (if ``need_video``) and audio (if ``need_audio``).

    ``frame_stride``: run face detection on every ``frame_stride``-th frame (all frames are
    still decoded, as the codec requires). ``detector`` None: every frame is a face crop
    already (``dataset.faces=given``). A still image is one frame. S3 URIs are copied to a
    temporary local file.
    """
    if crop_size < 1 or frame_stride < 1:
        raise ValueError(
            f"crop_size and frame_stride must be >= 1, got {crop_size}, {frame_stride}"
        )
    if need_video and clip.video_uri is None:
        raise ExtractionError("no video stream: the clip has no video file")
    if need_audio and clip.audio_uri is None:
        raise ExtractionError("no audio stream: the clip has no audio file")

    faces: FaceTrack | None = None
    audio: AudioTrack | None = None
    with ExitStack() as stack:
        if need_video:
            assert clip.video_uri is not None
            if is_image_uri(clip.video_uri):
                image_path = _local_path(stack, clip.video_uri, storage_options, "image")
                faces = decode_image(image_path, detector, crop_size)
            else:
                video_path = _local_path(stack, clip.video_uri, storage_options, "video")
                faces = decode_faces(video_path, detector, crop_size, frame_stride)
        if need_audio:
            assert clip.audio_uri is not None
            if need_video and clip.audio_uri == clip.video_uri:
                audio_path = video_path  # one container: copied once
            else:
                audio_path = _local_path(stack, clip.audio_uri, storage_options, "audio")
            audio = decode_audio(audio_path)
    return ClipMedia(faces=faces, audio=audio)


def _local_path(stack: ExitStack, uri: str, storage_options: dict | None, role: str) -> Path:
    # Imported here: decoding a local file needs nothing from the storage layer's deps.
    from orchestrate.datasets.filesystem import local_copy

    try:
        return stack.enter_context(local_copy(uri, storage_options))
    except FileNotFoundError as error:
        raise ExtractionError(f"{role} file not found") from error
    except (OSError, ValueError) as error:
        raise ExtractionError(f"unreadable {role} file ({_one_line(error)})") from error


def frame_face(
    frame: np.ndarray, detector: FaceDetector | None, crop_size: int
) -> np.ndarray | None:
    """The ``crop_size`` square crop of ``frame``'s largest face (None: no face found).

    Without a detector the frame is a face crop already: its centred square, no margin.
    """
    if detector is None:
        height, width = frame.shape[:2]
        return crop_face(frame, (0, 0, width, height), crop_size, margin=0.0)
    box = detector.largest_face(frame)
    return None if box is None else crop_face(frame, box, crop_size)


def decode_image(
    path: str | Path, detector: FaceDetector | None, crop_size: int = 128
) -> FaceTrack:
    """A still image as a one-frame track: its largest face (or, without a detector, itself).

    The bytes are decoded with ``cv2.imdecode`` (PNG, JPEG, BMP, TIFF, WebP; grayscale and
    alpha images become 3-channel BGR). Raises ``ExtractionError`` when OpenCV can't decode
    them. An image without a face decodes fine (its one crop is None): the extractors that
    need a face report "no face in the image".
    """
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None or image.size == 0:
        raise ExtractionError("unreadable image: OpenCV can't decode the file")
    crop = frame_face(image, detector, crop_size)
    del image  # the full-resolution image is never kept past its crop
    return FaceTrack(frame_indices=[0], crops=[crop], fps=0.0, crop_size=crop_size, still=True)


def decode_faces(
    path: str | Path, detector: FaceDetector | None, crop_size: int = 128, frame_stride: int = 1
) -> FaceTrack:
    """The largest-face crop (BGR uint8, ``crop_size`` square) of every ``frame_stride``-th frame.

    ``detector`` None: each frame is a face crop already (see ``frame_face``).

    Raises ``ExtractionError`` when the file has no video stream, can't be opened, decodes
    to no frames, or decodes to clearly fewer frames than its container declares.
    """
    declared_frames, fps = _probe_video(path)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise ExtractionError("corrupt video: OpenCV can't open the file")
    frame_indices: list[int] = []
    crops: list[np.ndarray | None] = []
    decoded = 0
    try:
        while True:
            if decoded % frame_stride:
                # grab() decodes without the colour conversion of retrieve(): skipped frames
                # still have to go through the codec, but cost no more than that.
                if not capture.grab():
                    break
            else:
                ok, frame = capture.read()
                if not ok:
                    break
                frame_indices.append(decoded)
                crops.append(frame_face(frame, detector, crop_size))
                del frame  # the raw frame is never kept past its crop
            decoded += 1
    finally:
        capture.release()
    if decoded == 0:
        raise ExtractionError("corrupt or truncated video: no frame could be decoded")
    if declared_frames and decoded < MIN_DECODED_SHARE * declared_frames:
        raise ExtractionError(
            f"corrupt or truncated video: decoded {decoded} of the {declared_frames} frames "
            "declared"
        )
    return FaceTrack(frame_indices=frame_indices, crops=crops, fps=fps, crop_size=crop_size)


def _probe_video(path: str | Path) -> tuple[int, float]:
    """(frames the container declares, or 0 when unknown; frame rate) of the video stream."""
    try:
        with av.open(str(path)) as container:
            _require_stream(container, "video")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            declared = stream.frames
            if not declared and fps:
                seconds = _declared_seconds(container, stream)
                declared = int(round(seconds * fps)) if seconds else 0
            return declared, fps
    except av.FFmpegError as error:
        raise ExtractionError(f"corrupt or unreadable video file ({_one_line(error)})") from error


def decode_audio(path: str | Path) -> AudioTrack:
    """The first audio stream of ``path``, mixed to mono float32 at its native rate.

    Channels are averaged (a plain mean, so a centred voice keeps its level). Raises
    ``ExtractionError`` when there is no audio stream, the stream can't be decoded, or it
    decodes to clearly less audio than the container declares.
    """
    try:
        with av.open(str(path)) as container:
            _require_stream(container, "audio")
            stream = container.streams.audio[0]
            sample_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            if sample_rate <= 0:
                raise ExtractionError("corrupt audio stream: no sample rate")
            declared_seconds = _declared_seconds(container, stream)
            # Planar float keeps the channels apart; the rate and layout stay the source's.
            resampler = av.AudioResampler(format="fltp", rate=sample_rate)
            chunks: list[np.ndarray] = []
            for frame in container.decode(stream):
                for planar in resampler.resample(frame):
                    chunks.append(planar.to_ndarray().mean(axis=0, dtype=np.float32))
            for planar in resampler.resample(None):
                chunks.append(planar.to_ndarray().mean(axis=0, dtype=np.float32))
    except av.FFmpegError as error:
        raise ExtractionError(f"corrupt or unreadable audio file ({_one_line(error)})") from error
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if samples.size == 0:
        raise ExtractionError("corrupt or truncated audio: no sample could be decoded")
    decoded_seconds = samples.size / sample_rate
    if declared_seconds and decoded_seconds < MIN_DECODED_SHARE * declared_seconds:
        raise ExtractionError(
            f"corrupt or truncated audio: decoded {decoded_seconds:.2f} s of the "
            f"{declared_seconds:.2f} s declared"
        )
    return AudioTrack(samples=samples, sample_rate=sample_rate)


def _declared_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """The stream's duration as its container declares it (0.0 when it doesn't)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _require_stream(container: av.container.InputContainer, kind: str) -> None:
    if not getattr(container.streams, kind):
        if not container.streams:
            # A container without any stream is a damaged header, not a one-modality file.
            raise ExtractionError(f"corrupt or truncated {kind} file: no streams found")
        raise ExtractionError(f"no {kind} stream in the file")


def _one_line(error: BaseException) -> str:
    # FFmpeg errors carry the file name; the reason names the problem, the row the clip.
    text = getattr(error, "strerror", None) if isinstance(error, av.FFmpegError) else None
    return " ".join(str(text or error).split()) or type(error).__name__
