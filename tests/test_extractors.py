"""The per-paper extractors on real clips, their registry, and the clips they must refuse."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile

from orchestrate.datasets.base import Clip
from orchestrate.extractors import EXTRACTORS, build_extractor, extractor_param_names
from orchestrate.extractors.base import (
    AudioTrack,
    ClipMedia,
    ExtractionError,
    FaceTrack,
    param_hash,
)
from orchestrate.extractors.wang import lbp_histograms, lpq_histogram, phog
from orchestrate.faces import HaarFaceDetector
from orchestrate.media import decode_clip

RAVDESS_MP4 = "ravdess/av/01-01-01-01-01-01-01.mp4"
CREMA_FLV = "crema-d/1001_DFA_HAP_XX.flv"
RAVDESS_WAV = "ravdess/audio/Actor_02/03-01-03-02-01-01-02.wav"
FER_MODEL = "models/fer2013_mini_XCEPTION.102-0.66.hdf5"

AUDIO = ("emodal_audio", "song_mfcc", "mitseas_audio")
VIDEO = ("emodal_face", "song_vgg16", "mitseas_fer", "wang_texture")


def extractors(shared_data: Path) -> dict:
    """Every extractor with test-friendly parameters (no weight download in tests)."""
    params = {
        "song_vgg16": {"weights": "random"},
        "mitseas_fer": {"model_path": str(shared_data / FER_MODEL)},
    }
    return {name: build_extractor(name, params.get(name)) for name in EXTRACTORS}


def decode(path: Path | str, video: bool = True, audio: bool = True) -> ClipMedia:
    clip = Clip("clip", "test", "01", "neutral", str(path) if video else None, str(path))
    return decode_clip(clip, need_video=video, need_audio=audio, detector=HaarFaceDetector())


@pytest.fixture(scope="module")
def ravdess(shared_data: Path) -> ClipMedia:
    return decode(shared_data / RAVDESS_MP4)


@pytest.fixture(scope="module")
def crema(shared_data: Path) -> ClipMedia:
    return decode(shared_data / CREMA_FLV)


@pytest.fixture(scope="module")
def all_extractors(shared_data: Path) -> dict:
    return extractors(shared_data)


def assert_sane(array: np.ndarray, shape: tuple[int, ...]) -> None:
    assert array.shape == shape
    assert np.all(np.isfinite(array))
    assert np.ptp(array) > 0  # not constant


# --- the registry ----------------------------------------------------------------------------


def test_registry_names_and_contract(all_extractors: dict) -> None:
    assert set(EXTRACTORS) == set(AUDIO) | set(VIDEO)
    for name, extractor in all_extractors.items():
        assert extractor.name == name
        assert extractor.modality == ("audio" if name in AUDIO else "video")
        assert extractor.version and extractor.outputs
        assert set(extractor.params) == set(extractor_param_names(name))
        # Ingest rebuilds extractors from their params inside actors: same key back.
        rebuilt = build_extractor(name, extractor.params)
        assert param_hash(rebuilt.params) == param_hash(extractor.params)
        assert (extractor.make_embedder() is None) == (name not in ("song_vgg16", "mitseas_fer"))


def test_build_extractor_rejects_bad_names_and_params(shared_data: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown extractor 'vgg'.*allowed: .*song_vgg16"):
        build_extractor("vgg")
    with pytest.raises(
        ValueError, match=r"emodal_audio: unknown parameter\(s\) rate .*sample_rate"
    ):
        build_extractor("emodal_audio", {"rate": 8000})
    with pytest.raises(ValueError, match=r"^emodal_face\.face_size: must be int, got '128'$"):
        build_extractor("emodal_face", {"face_size": "128"})
    with pytest.raises(ValueError, match=r"song_mfcc\.hop_length: must be > 0"):
        build_extractor("song_mfcc", {"hop_length": 0})
    with pytest.raises(ValueError, match=r"song_vgg16\.crop_size: must be >= 32"):
        build_extractor("song_vgg16", {"weights": "random", "crop_size": 16})
    with pytest.raises(ValueError, match=r"wang_texture\.lpq_window: must be odd"):
        build_extractor("wang_texture", {"lpq_window": 6})
    from orchestrate.weights import cached_weights

    if cached_weights("fer2013") is None:  # else the fetched model is the default
        with pytest.raises(ValueError, match=r"mitseas_fer\.model_path: no FER-2013 model given"):
            build_extractor("mitseas_fer")
    with pytest.raises(ValueError, match=r"mitseas_fer\.model_path: no such file"):
        build_extractor("mitseas_fer", {"model_path": str(shared_data / "models" / "none.h5")})
    with pytest.raises(ValueError, match=r"song_vgg16\.weights: no such file"):
        build_extractor("song_vgg16", {"weights": "/nonexistent/vgg16.pth"})
    # YAML writes 1 for 1.0: an int is a fine float, and is stored as one.
    assert build_extractor("mitseas_audio", {"mid_window": 2}).params["mid_window"] == 2.0


def test_params_change_the_cache_key(shared_data: Path, tmp_path: Path) -> None:
    base = build_extractor("song_mfcc")
    assert param_hash(base.params) != param_hash(
        build_extractor("song_mfcc", {"n_mels": 64}).params
    )
    # Replacing the model file at the same path is a new key, never a stale cache hit.
    model = tmp_path / "fer.hdf5"
    shutil.copy(shared_data / FER_MODEL, model)
    before = build_extractor("mitseas_fer", {"model_path": str(model)})
    with model.open("ab") as handle:
        handle.write(b"\0")
    after = build_extractor("mitseas_fer", {"model_path": str(model)})
    assert param_hash(before.params) != param_hash(after.params)
    with pytest.raises(ValueError, match="model_digest"):
        build_extractor("mitseas_fer", before.params)


def test_fer_random_model_is_resolved_into_the_params(tmp_path: Path) -> None:
    from orchestrate.extractors.fer_cnn import FerCnn

    random = build_extractor("mitseas_fer", {"model_path": "random"})
    assert random.params["model_path"] == "random"
    # The digest pins the seeded weights: a change in how they are drawn is a new key.
    assert random.params["model_digest"] == FerCnn.random(seed=0, device="cpu").source_sha256
    assert build_extractor("mitseas_fer", random.params).params == random.params
    with pytest.raises(ValueError, match=r"mitseas_fer\.model_digest: random changed"):
        build_extractor("mitseas_fer", {**random.params, "model_digest": "0" * 64})
    # A file model (only hashed here) is another cache key.
    model = tmp_path / "fer.hdf5"
    model.write_bytes(b"a Keras HDF5 file")
    from_file = build_extractor("mitseas_fer", {"model_path": str(model)})
    assert from_file.params["model_path"] == str(model.resolve())
    assert param_hash(from_file.params) != param_hash(random.params)
    # A missing path or file stays an error, naming the way out.
    from orchestrate.weights import cached_weights

    if cached_weights("fer2013") is None:  # else the fetched model is the default
        with pytest.raises(ValueError, match=r"mitseas_fer\.model_path: no FER-2013 .*\"random\""):
            build_extractor("mitseas_fer", {"face_size": 64})
    with pytest.raises(ValueError, match=r"mitseas_fer\.model_path: no such file .*random"):
        build_extractor("mitseas_fer", {"model_path": str(tmp_path / "missing.hdf5")})


def test_fer_random_model_embeds_face_crops() -> None:
    from orchestrate.extractors.mitseas import FerClipEmbedder
    from orchestrate.extractors.vgg16 import WeightsError

    extractor = build_extractor("mitseas_fer", {"model_path": "random"})
    rng = np.random.default_rng(0)
    # What ``extract`` gives: 64x64 grayscale faces, as many as frames with a face.
    clips = [
        {
            "faces": np.stack(
                [
                    cv2.GaussianBlur(face, (7, 7), 0)
                    for face in rng.integers(0, 256, (n, 64, 64), dtype=np.uint8)
                ]
            ),
            "frames_with_face": np.array(n),
        }
        for n in (5, 3)
    ]
    embed = extractor.make_embedder()
    outputs = embed(clips)
    assert len(outputs) == 2
    for clip_in, clip_out in zip(clips, outputs, strict=True):
        assert set(clip_out) == set(extractor.outputs)
        probabilities = clip_out["probabilities"]
        assert probabilities.shape == (7,) and probabilities.dtype == np.float32
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5) and probabilities.min() > 0
        assert int(clip_out["frames_with_face"]) == len(clip_in["faces"])
    assert np.abs(outputs[0]["probabilities"] - outputs[1]["probabilities"]).sum() > 1e-4
    np.testing.assert_allclose(
        embed([clips[1]])[0]["probabilities"], outputs[1]["probabilities"], atol=1e-6
    )
    # An actor whose model is not the one the extractor was built with refuses to embed.
    with pytest.raises(WeightsError, match=r"FER model random has sha256 .*not the 000000"):
        FerClipEmbedder("random", device="cpu", model_digest="0" * 64)(clips)


def test_vgg16_weight_source_is_resolved_into_the_params(tmp_path: Path) -> None:
    random = build_extractor("song_vgg16", {"weights": "random"})
    assert random.params["weights_source"] == "random"
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"not really weights")
    from_file = build_extractor("song_vgg16", {"weights": str(weights)})
    assert from_file.params["weights_source"] == f"file:{weights.resolve()}"
    assert len(from_file.params["weights_digest"]) == 64
    with pytest.raises(ValueError, match="weights_source"):
        build_extractor("song_vgg16", {"weights": "random", "weights_source": "imagenet"})


def test_imagenet_weights_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from orchestrate.extractors import song

    def no_network(checkpoint: Path) -> None:
        raise OSError("no network")

    monkeypatch.setattr(song, "_imagenet_checkpoint", lambda: tmp_path / "vgg16-397923af.pth")
    monkeypatch.setattr(song, "_download_imagenet_checkpoint", no_network)
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"a state_dict")
    # Not cached, not downloadable: the weights file given in the config is used...
    fallback = build_extractor("song_vgg16", {"weights_file": str(weights)})
    assert fallback.params["weights_source"] == f"file:{weights.resolve()}"
    # ...and without one the build fails, before any clip is decoded.
    with pytest.raises(ValueError, match=r"song_vgg16\.weights: .*\(no network\).*weights_file"):
        build_extractor("song_vgg16")
    # Rebuilt from the driver's params (as the embedder actors do), the choice sticks even
    # where torchvision's checkpoint is cached.
    (tmp_path / "vgg16-397923af.pth").write_bytes(b"cached")
    assert build_extractor("song_vgg16", {"weights_file": str(weights)}).params[
        "weights_source"
    ] == ("imagenet")
    assert build_extractor("song_vgg16", fallback.params).params == fallback.params


# --- real clips ------------------------------------------------------------------------------


def test_video_extractors_on_ravdess_mp4(ravdess: ClipMedia, all_extractors: dict) -> None:
    frames = len(ravdess.faces.crops)
    with_face = ravdess.faces.frames_with_face
    face = all_extractors["emodal_face"].extract(ravdess)
    assert face["face"].shape == (128, 128) and face["face"].dtype == np.uint8
    assert face["face"].std() > 10
    assert int(face["frames_with_face"]) == with_face

    crops = all_extractors["song_vgg16"].extract(ravdess)["crops"]
    with_face_every_4th = sum(
        c is not None
        for i, c in zip(ravdess.faces.frame_indices, ravdess.faces.crops, strict=True)
        if i % 4 == 0
    )
    assert crops.shape == (with_face_every_4th, 48, 48, 3) and crops.dtype == np.uint8
    assert with_face_every_4th >= 0.9 * len(range(0, frames, 4))

    faces = all_extractors["mitseas_fer"].extract(ravdess)["faces"]
    assert faces.shape == (with_face, 64, 64) and faces.dtype == np.uint8

    texture = all_extractors["wang_texture"].extract(ravdess)
    assert_sane(texture["lbp"], (160,))
    assert_sane(texture["lpq"], (256,))
    assert_sane(texture["phog"], (168,))
    np.testing.assert_allclose(texture["lbp"].reshape(16, 10).sum(axis=1), 1.0, rtol=1e-5)
    assert texture["lpq"].sum() == pytest.approx(1.0)
    assert texture["phog"].sum() == pytest.approx(1.0)


def test_audio_extractors_on_ravdess_mp4(ravdess: ClipMedia, all_extractors: dict) -> None:
    seconds = ravdess.audio.seconds
    assert_sane(all_extractors["emodal_audio"].extract(ravdess)["features"], (68,))
    mfcc = all_extractors["song_mfcc"].extract(ravdess)["mfcc"]
    # torchaudio centres frames: 1 + samples // hop frames of 4096 samples at 48 kHz.
    assert_sane(mfcc, (1 + int(seconds * 48000) // 2048, 13))
    assert mfcc.dtype == np.float32
    assert_sane(all_extractors["mitseas_audio"].extract(ravdess)["features"], (136,))


def test_crema_d_flv_all_extractors(crema: ClipMedia, all_extractors: dict) -> None:
    # 44.1 kHz MP3 audio: resampled to each extractor's rate.
    assert crema.audio.sample_rate == 44100
    assert_sane(all_extractors["emodal_audio"].extract(crema)["features"], (68,))
    assert all_extractors["song_mfcc"].extract(crema)["mfcc"].shape[1] == 13
    assert_sane(all_extractors["mitseas_audio"].extract(crema)["features"], (136,))
    assert all_extractors["emodal_face"].extract(crema)["face"].shape == (128, 128)
    assert all_extractors["song_vgg16"].extract(crema)["crops"].shape[1:] == (48, 48, 3)


def test_audio_only_wav_and_its_features_differ_by_emotion(
    shared_data: Path, ravdess: ClipMedia, all_extractors: dict
) -> None:
    media = decode(shared_data / RAVDESS_WAV, video=False)
    assert media.faces is None
    for name in AUDIO:
        features = all_extractors[name].extract(media)
        (array,) = features.values()
        assert np.all(np.isfinite(array))
    happy = all_extractors["emodal_audio"].extract(media)["features"]
    neutral = all_extractors["emodal_audio"].extract(ravdess)["features"]
    assert not np.allclose(happy, neutral)
    with pytest.raises(ValueError, match="need_video"):
        all_extractors["emodal_face"].extract(media)


def test_short_clip_gives_one_mid_term_window(all_extractors: dict) -> None:
    rng = np.random.default_rng(0)
    rate = 48000
    half_second = (0.1 * rng.standard_normal(rate // 2)).astype(np.float32)
    media = ClipMedia(faces=None, audio=AudioTrack(half_second, rate))
    assert_sane(all_extractors["mitseas_audio"].extract(media)["features"], (136,))
    assert all_extractors["song_mfcc"].extract(media)["mfcc"].shape == (1 + rate // 2 // 2048, 13)
    blip = ClipMedia(faces=None, audio=AudioTrack(half_second[:480], rate))  # 10 ms
    with pytest.raises(ExtractionError, match="shorter than one 50 ms"):
        all_extractors["mitseas_audio"].extract(blip)
    assert all_extractors["song_mfcc"].extract(blip)["mfcc"].shape == (3, 13)  # padded


# --- bad input ---------------------------------------------------------------------------------


def test_silent_audio_fails_the_audio_extractors(tmp_path: Path, all_extractors: dict) -> None:
    path = tmp_path / "silence.wav"
    noise = 1e-6 * np.random.default_rng(0).standard_normal(48000)
    soundfile.write(path, noise, 48000, subtype="FLOAT")
    media = decode(path, video=False)
    for name in AUDIO:
        with pytest.raises(ExtractionError, match=r"^silent audio \(RMS below -80 dBFS\)$"):
            all_extractors[name].extract(media)


def test_faceless_video_fails_video_extractors_only(
    tmp_path: Path, shared_data: Path, all_extractors: dict
) -> None:
    # A blank video with a real voice: audio extractors still succeed on the same clip.
    path = tmp_path / "blank.mp4"
    write_av(path, [np.full((240, 320, 3), 128, np.uint8)] * 12, shared_data / RAVDESS_WAV)
    media = decode(path)
    assert media.faces.frames_with_face == 0
    for name in VIDEO:
        with pytest.raises(ExtractionError, match=r"^no face in any of \d+ frames$"):
            all_extractors[name].extract(media)
    for name in AUDIO:
        all_extractors[name].extract(media)


def test_middle_frame_without_face_uses_the_nearest(all_extractors: dict) -> None:
    rng = np.random.default_rng(0)
    crops = [None] * 9
    crops[1] = rng.integers(0, 255, (128, 128, 3), np.uint8)
    crops[6] = rng.integers(0, 255, (128, 128, 3), np.uint8)
    media = ClipMedia(FaceTrack(list(range(9)), crops, 25.0, 128), None)
    face = all_extractors["emodal_face"].extract(media)["face"]
    np.testing.assert_array_equal(face, cv2.cvtColor(crops[6], cv2.COLOR_BGR2GRAY))


def test_extractors_refuse_a_track_decoded_too_sparsely(all_extractors: dict) -> None:
    crop = np.zeros((128, 128, 3), np.uint8)
    media = ClipMedia(FaceTrack([0, 3, 6], [crop] * 3, 25.0, 128), None)
    with pytest.raises(ValueError, match="decode with frame_stride=1"):
        all_extractors["song_vgg16"].extract(media)


def write_av(path: Path, frames: list[np.ndarray], wav: Path) -> None:
    """An mp4 with ``frames`` (H.264) and the first second of ``wav`` (AAC)."""
    import av

    samples, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(video.encode(None))
        chunk = av.AudioFrame.from_ndarray(
            samples[:rate, :1].T.copy(), format="fltp", layout="mono"
        )
        chunk.sample_rate = rate
        container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


# --- descriptors -------------------------------------------------------------------------------


def test_texture_descriptors_behave_as_published() -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 64), np.uint8), (5, 5), 1.5)
    # LBP codes compare neighbours: any increasing grey-level map leaves them unchanged.
    assert image.max() <= 235
    brighter = image + np.uint8(20)
    np.testing.assert_allclose(lbp_histograms(brighter), lbp_histograms(image))
    # LPQ codes are signs of Fourier phases: scaling the contrast leaves them unchanged.
    np.testing.assert_array_equal(lpq_histogram(0.5 * image.astype(float)), lpq_histogram(image))
    assert lpq_histogram(image).shape == (256,)
    # PHOG of vertical stripes: every vote in the 0-degree (horizontal gradient) bin.
    stripes = np.zeros((64, 64), np.uint8)
    stripes[:, 16:32] = 255
    stripes[:, 48:] = 255
    level0 = phog(stripes, bins=8, levels=2)[:8]
    assert level0.argmax() == 0 and level0[0] > 0.9 * level0.sum()
    assert phog(np.zeros((64, 64), np.uint8)).sum() == 0  # no edges, no votes


# --- embedders (the networks themselves are tested in test_networks.py) -------------------------


def test_vgg16_embedder_end_to_end_with_random_weights(
    ravdess: ClipMedia, crema: ClipMedia, all_extractors: dict
) -> None:
    extractor = all_extractors["song_vgg16"]
    inputs = [extractor.extract(ravdess), extractor.extract(crema)]
    embed = extractor.make_embedder()
    outputs = embed(inputs)
    assert len(outputs) == 2
    for clip_in, clip_out in zip(inputs, outputs, strict=True):
        assert set(clip_out) == set(extractor.outputs)
        assert_sane(clip_out["features"], (len(clip_in["crops"]), 512))
        assert clip_out["features"].dtype == np.float32
    # Batching doesn't change a clip's features.
    alone = embed([inputs[1]])[0]["features"]
    np.testing.assert_allclose(alone, outputs[1]["features"], rtol=1e-4, atol=1e-5)


def test_memoised_chroma_tables_leave_pyaudioanalysis_features_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrate.extractors.pyaudioanalysis import pyaudioanalysis

    short_term, mid_term = pyaudioanalysis()
    memoised = short_term.chroma_features_init
    assert memoised.cache_info() is not None
    signal = np.random.default_rng(0).standard_normal(3 * 16_000) * 3000.0
    fast = short_term.feature_extraction(signal, 16_000, 800, 400, deltas=True)[0]
    fast_mid = mid_term.mid_feature_extraction(signal, 16_000, 16_000, 8000, 800, 800)[0]
    assert memoised.cache_info().hits > 0  # the tables were built once, then reused
    monkeypatch.setattr(short_term, "chroma_features_init", memoised.__wrapped__)
    np.testing.assert_array_equal(
        short_term.feature_extraction(signal, 16_000, 800, 400, deltas=True)[0], fast
    )
    np.testing.assert_array_equal(
        mid_term.mid_feature_extraction(signal, 16_000, 16_000, 8000, 800, 800)[0], fast_mid
    )


def test_vgg16_random_weights_are_torchvisions_seeded_init_built_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch
    from torchvision.models import vgg16

    from orchestrate.extractors.vgg16 import RANDOM_INIT_SEED, Vgg16Block5Embedder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        expected = vgg16(weights=None).features.state_dict()

    def assert_expected(embedder: Vgg16Block5Embedder) -> None:
        got = embedder.features.state_dict()
        assert sorted(got) == sorted(expected)
        assert all(torch.equal(got[key], expected[key]) for key in expected)

    before = torch.get_rng_state()
    assert_expected(Vgg16Block5Embedder("random", device="cpu"))  # built, then kept
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched
    (cached,) = (tmp_path / "hub" / "checkpoints").glob("orchestrate-vgg16-*random*.pt")
    assert_expected(Vgg16Block5Embedder("random", device="cpu"))  # read from the cache
    cached.write_bytes(b"torn")  # a file that can't be read is built again
    assert_expected(Vgg16Block5Embedder("random", device="cpu"))
    assert cached.stat().st_size > 50 * 2**20


@pytest.mark.skipif(
    importlib.util.find_spec("orchestrate.extractors.fer_cnn") is None,
    reason="orchestrate/extractors/fer_cnn.py not written yet",
)
def test_fer_embedder_end_to_end(ravdess: ClipMedia, crema: ClipMedia, all_extractors) -> None:
    extractor = all_extractors["mitseas_fer"]
    inputs = [extractor.extract(ravdess), extractor.extract(crema)]
    outputs = extractor.make_embedder()(inputs)
    for clip_in, clip_out in zip(inputs, outputs, strict=True):
        assert set(clip_out) == set(extractor.outputs)
        probabilities = clip_out["probabilities"]
        assert probabilities.shape == (7,) and probabilities.dtype == np.float32
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5) and probabilities.min() >= 0
        assert int(clip_out["frames_with_face"]) == len(clip_in["faces"])
    # Faces cropped, greyed and sized right are recognised: the neutral RAVDESS clip reads
    # as neutral, the happy CREMA-D clip as happy.
    from orchestrate.extractors.fer_cnn import FER2013_CLASSES

    assert FER2013_CLASSES[int(outputs[0]["probabilities"].argmax())] == "neutral"
    assert FER2013_CLASSES[int(outputs[1]["probabilities"].argmax())] == "happy"


def test_fer_random_model_on_a_real_clip(ravdess: ClipMedia) -> None:
    # The demo's setting: a real clip's faces through the random network.
    random = build_extractor("mitseas_fer", {"model_path": "random"})
    clip = random.extract(ravdess)
    assert clip["faces"].shape == (ravdess.faces.frames_with_face, 64, 64)
    (output,) = random.make_embedder()([clip])
    assert output["probabilities"].shape == (7,) and np.isfinite(output["probabilities"]).all()
    assert output["probabilities"].sum() == pytest.approx(1.0, abs=1e-5)
    assert int(output["frames_with_face"]) == len(clip["faces"])
