"""A BirdNET-style multi-label audio model for the agent's ``window`` audio events.

``python -m tests.integration.multilabel_audio OUT`` (a child process: it imports
TensorFlow) synthesises 2 s clips at 16 kHz holding 0-3 different words of
:data:`VOCAB`, spoken by espeak-ng with varied voices, speeds and pitches at
random, sometimes partly overlapping, positions on low noise, with multi-hot
labels. A small CNN over the device's own log-mel front end
(:func:`edge_agent.preprocess.audio_features`) ends in one logit per word and is
trained with binary cross-entropy, then exported as a SavedModel and converted
to a fully int8 TFLite model. It writes:

* ``OUT/multilabel.tflite`` + ``OUT/multilabel.toml`` (the agent's sidecar:
  ``activation = "sigmoid"``, ``audio_events = "window"``, 2 s windows, 2 s hop);
* ``OUT/scene.wav`` (16 kHz mono 16-bit): :data:`SCENE`, one 2 s segment per
  window, spoken by voices the model never heard, and ``OUT/scene.json``
  (``{"window_s", "windows": [[label, ...], ...]}``);
* ``OUT/info.json``: per-label precision/recall/AP, mean AP and exact-match ratio
  on held-out clips (held-out voices), measured with the int8 model through
  ai-edge-litert and for the float Keras model, plus the training time (wall and CPU).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from converter.examples import _seed_everything
from converter.keyword_data import ESPEAK_VOICES, _background, _speak, _trim, _write_wav
from edge_agent.model.manifest import AudioPreprocess
from edge_agent.preprocess import audio_features, resample

VOCAB: tuple[str, ...] = ("red", "green", "blue", "stop")
RATE = 16000
WINDOW_S = 2.0
LENGTH = int(RATE * WINDOW_S)
SEED = 0
TRAIN_VOICES = ESPEAK_VOICES[:8]
HELD_OUT_VOICES = ESPEAK_VOICES[8:]  # never heard in training: held-out metrics and the scene
UTTERANCES_PER_WORD = 48  # training pool: word x (voice, speed, pitch)
HELD_OUT_UTTERANCES_PER_WORD = 16
N_TRAIN, N_TEST, EPOCHS, BATCH = 2400, 400, 14, 32
WORD_COUNT_P = (0.15, 0.35, 0.35, 0.15)  # P(0, 1, 2, 3 words in a clip)
MAX_OVERLAP = 0.35  # of the shorter of two words, when overlap is allowed
SCENE: tuple[tuple[str, ...], ...] = (("red",), ("green", "stop"), (), ("blue", "red"), ("stop",))

SIDECAR = f"""name = "multilabel"
version = "1"
task = "audio_classify"
labels = {json.dumps(list(VOCAB))}

[preprocess]
kind = "audio"
sample_rate = {RATE}
window_s = {WINDOW_S}
hop_s = {WINDOW_S}
feature = "logmel"

[output]
activation = "sigmoid"
audio_events = "window"
score_threshold = 0.5
top_k = {len(VOCAB)}
"""


def feature_spec() -> AudioPreprocess:
    """The device's front end for this model: 2 s log-mel windows with the default STFT (99x40)."""
    return AudioPreprocess(kind="audio", sample_rate=RATE, window_s=WINDOW_S, hop_s=1.0, feature="logmel")


# --------------------------------------------------------------------------- data


def speak_pool(voices: tuple[str, ...], per_word: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """``per_word`` trimmed, peak-normalised espeak-ng utterances of each word at 16 kHz."""
    jobs = [
        (word, voices[int(rng.integers(len(voices)))], int(rng.integers(120, 220)), int(rng.integers(20, 80)))
        for word in VOCAB for _ in range(per_word)
    ]
    pool: dict[str, list[np.ndarray]] = {word: [] for word in VOCAB}
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(4) as executor:
        futures = [executor.submit(_speak, w, v, s, p, Path(tmp)) for w, v, s, p in jobs]
        for (word, *_), future in zip(jobs, futures, strict=True):
            samples, rate = future.result()
            clip = _trim(resample(samples, rate, RATE), RATE)[: LENGTH // 2]
            pool[word].append((clip / (float(np.max(np.abs(clip))) or 1.0)).astype(np.float32))
    return pool


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Overlap of two sample intervals as a fraction of the shorter one."""
    shared = min(a[1], b[1]) - max(a[0], b[0])
    return max(0, shared) / max(1, min(a[1] - a[0], b[1] - b[0]))


def mix_words(clips: list[np.ndarray], rng: np.random.Generator, length: int = LENGTH) -> np.ndarray:
    """The clips at random positions inside ``length`` samples: apart, or (sometimes) partly
    overlapping by at most :data:`MAX_OVERLAP` of the shorter word; with random gains."""
    allowed = MAX_OVERLAP if rng.random() < 0.3 else 0.0
    out = np.zeros(length, dtype=np.float32)
    placed: list[tuple[int, int]] = []
    for clip in clips:
        span = (0, clip.size)
        for _ in range(50):
            start = int(rng.integers(0, length - clip.size + 1))
            span = (start, start + clip.size)
            if all(_overlap(span, other) <= allowed for other in placed):
                break
        placed.append(span)
        out[span[0] : span[1]] += clip * rng.uniform(0.3, 0.9)
    return out


def make_clips(pool: dict[str, list[np.ndarray]], n: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clips' log-mel features (n, frames, mels) and multi-hot labels (n, len(VOCAB))."""
    spec = feature_spec()
    features, targets = [], []
    for _ in range(n):
        count = int(rng.choice(len(WORD_COUNT_P), p=WORD_COUNT_P))
        chosen = sorted(int(i) for i in rng.choice(len(VOCAB), size=count, replace=False))
        clips = [pool[VOCAB[i]][int(rng.integers(len(pool[VOCAB[i]])))] for i in chosen]
        signal = mix_words(clips, rng) + _background(LENGTH, rng) * rng.uniform(0.05, 0.3)
        features.append(audio_features(np.clip(signal, -1.0, 1.0), spec))
        target = np.zeros(len(VOCAB), dtype=np.float32)
        target[chosen] = 1.0
        targets.append(target)
    return np.stack(features).astype(np.float32), np.stack(targets)


def write_scene(pool: dict[str, list[np.ndarray]], rng: np.random.Generator, out: Path) -> tuple[Path, Path]:
    """:data:`SCENE` as one WAV, one 2 s segment per window (words kept inside their segment)."""
    segments = []
    for words in SCENE:
        clips = [pool[w][int(rng.integers(len(pool[w])))] for w in words]
        segments.append(mix_words(clips, rng) if clips else np.zeros(LENGTH, dtype=np.float32))
    signal = np.concatenate(segments) + rng.normal(0.0, 0.003, LENGTH * len(SCENE)).astype(np.float32)
    wav, truth = out / "scene.wav", out / "scene.json"
    _write_wav(wav, signal, RATE)
    truth.write_text(json.dumps({"window_s": WINDOW_S, "windows": [list(w) for w in SCENE]}))
    return wav, truth


# --------------------------------------------------------------------------- model


def train(features: np.ndarray, targets: np.ndarray) -> Any:
    """A small CNN, log-mel (frames, mels) in, one logit per word out (no activation)."""
    import keras

    _seed_everything(SEED)
    frames, mels = features.shape[1:]
    model = keras.Sequential(
        [
            keras.Input(shape=(frames, mels), name="logmel"),
            # Log-mel values span roughly -14..+6; a fixed affine keeps them near [-1, 1].
            keras.layers.Rescaling(1.0 / 8.0, offset=0.5),
            keras.layers.Reshape((frames, mels, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(48, 3, padding="same", activation="relu"),
            # A word may be anywhere in the window: its strongest response counts.
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(48, activation="relu"),
            keras.layers.Dense(len(VOCAB), name="logits"),
        ],
        name="multilabel",
    )
    # Label smoothing keeps the logits moderate (|logit| ~ 3), so scores are not all 1.0 and
    # the int8 output scale stays fine-grained.
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1))
    model.fit(features, targets, epochs=EPOCHS, batch_size=BATCH, verbose=0, shuffle=True)
    return model


def convert_int8(model: Any, calibration: np.ndarray, workdir: Path) -> bytes:
    """SavedModel (batch 1) -> full-int8 TFLite with int8 input and output."""
    import tensorflow as tf

    saved = workdir / "saved_model"
    spec = tf.TensorSpec([1, *calibration.shape[1:]], tf.float32, name="logmel")
    model.export(str(saved), verbose=False, input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))

    def representative() -> Any:
        for x in calibration:
            yield [x[None]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    data: bytes = converter.convert()
    return data


def run_tflite(path: Path, features: np.ndarray) -> np.ndarray:
    """Dequantised logits (n, classes) of an int8 TFLite model, one window at a time."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = outp["quantization"]
    logits = []
    for x in features:
        q = np.clip(np.round(x / in_scale + in_zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q.reshape(inp["shape"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(outp["index"]).astype(np.float32)
        logits.append(((raw - out_zero) * out_scale).reshape(-1))
    return np.stack(logits)


# --------------------------------------------------------------------------- metrics


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the precision-recall curve as the mean precision at each true positive."""
    if truth.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = truth[order] > 0
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precision[hits].mean())


def multilabel_metrics(logits: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Per-label precision/recall/AP at a sigmoid threshold, mean AP and exact-match ratio."""
    scores = 1.0 / (1.0 + np.exp(-logits))
    predicted = scores >= threshold
    actual = truth > 0
    per_label = {}
    for i, label in enumerate(VOCAB):
        tp = int(np.sum(predicted[:, i] & actual[:, i]))
        per_label[label] = {
            "precision": round(tp / max(1, int(predicted[:, i].sum())), 4),
            "recall": round(tp / max(1, int(actual[:, i].sum())), 4),
            "ap": round(average_precision(scores[:, i], truth[:, i]), 4),
        }
    return {
        "per_label": per_label,
        "mean_ap": round(float(np.mean([m["ap"] for m in per_label.values()])), 4),
        "exact_match": round(float(np.mean(np.all(predicted == actual, axis=1))), 4),
    }


# --------------------------------------------------------------------------- build


def build(out: Path) -> dict[str, Any]:
    """Data, training, int8 conversion, held-out metrics, sidecar and scene; returns info.json's content."""
    import tensorflow as tf

    started = time.monotonic()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    train_pool = speak_pool(TRAIN_VOICES, UTTERANCES_PER_WORD, rng)
    held_out_pool = speak_pool(HELD_OUT_VOICES, HELD_OUT_UTTERANCES_PER_WORD, rng)
    x_train, y_train = make_clips(train_pool, N_TRAIN, rng)
    x_test, y_test = make_clips(held_out_pool, N_TEST, rng)
    data_seconds = time.monotonic() - started

    t0, cpu0 = time.monotonic(), time.process_time()
    model = train(x_train, y_train)
    train_seconds, train_cpu_seconds = time.monotonic() - t0, time.process_time() - cpu0
    print(f"trained in {train_seconds:.1f} s", file=sys.stderr)
    float_metrics = multilabel_metrics(model.predict(x_test, verbose=0), y_test)

    tflite = out / "multilabel.tflite"
    with tempfile.TemporaryDirectory() as tmp:
        tflite.write_bytes(convert_int8(model, x_train[:300], Path(tmp)))
    int8_metrics = multilabel_metrics(run_tflite(tflite, x_test), y_test)
    sidecar = out / "multilabel.toml"
    sidecar.write_text(SIDECAR)
    scene, scene_truth = write_scene(held_out_pool, np.random.default_rng(SEED + 1), out)

    info = {
        "model": str(tflite), "sidecar": str(sidecar), "scene": str(scene), "scene_truth": str(scene_truth),
        "labels": list(VOCAB), "n_train": N_TRAIN, "n_test": N_TEST, "held_out_voices": list(HELD_OUT_VOICES),
        "int8": int8_metrics, "float": float_metrics,
        "data_seconds": round(data_seconds, 1), "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),  # wall time varies with the machine's load
        "total_seconds": round(time.monotonic() - started, 1),
    }
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(build(Path(sys.argv[1])), indent=1))
