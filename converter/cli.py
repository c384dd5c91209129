"""``edge-convert``: trained model -> verified int8 bundle; ``edge-convert wrap`` (an existing
``.tflite`` + sidecar -> bundle, no TensorFlow) and ``edge-convert inspect``.

Exit codes: 0 success, 2 bad input (one ``edge-convert: error: ...`` line saying
what to fix), 3 accuracy drop above ``--max-accuracy-drop`` (report printed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from converter.compress import DEFAULT_PRUNE_BLOCK, CompressOptions
from converter.convert import ConvertOptions, convert
from converter.errors import EXIT_USAGE, AccuracyError, ConvertError
from converter.fixed_shape import ShapeError, parse_input_shape
from converter.output import print_report
from converter.wrap import MAX_GOLDEN, WrapOptions, wrap
from edge_agent.errors import EdgeError, SignatureError
from edge_agent.model.bundle import read_bundle

PROG = "edge-convert"
_AUDIO_OPTIONS = {
    "sample_rate": "sample_rate", "window": "window_s", "hop": "hop_s", "feature": "feature",
    "frame_length": "frame_length", "frame_step": "frame_step", "fft_length": "fft_length",
    "n_mels": "n_mels", "n_mfcc": "n_mfcc", "fmin": "fmin", "fmax": "fmax",
}


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _floats(values: list[str] | None, option: str) -> list[float] | None:
    """Per-channel values given as ``1,2,3`` or repeated options."""
    if not values:
        return None
    out: list[float] = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                try:
                    out.append(float(part))
                except ValueError:
                    raise ConvertError(f"{option} takes numbers, got {part!r}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Convert a trained TensorFlow/Keras model into a verified, full-integer int8 "
                    "TFLite bundle. Use `edge-convert wrap MODEL.tflite --sidecar S.toml -o BUNDLE` to "
                    "bundle an existing TFLite model, `edge-convert inspect BUNDLE` to check a bundle.",
        epilog="Exit codes: 0 ok, 2 bad input, 3 accuracy drop above --max-accuracy-drop or agreement "
               "below --min-agreement (after the recovery ladder).",
    )
    parser.add_argument("model", type=Path, help="SavedModel folder, Keras 3 .keras file or legacy .h5 file")
    parser.add_argument("--calibration", type=Path, required=True, metavar="DATA",
                        help="image folder, WAV folder (class subfolders give labels) or .npz/.npy")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="BUNDLE", help="bundle file to write")
    parser.add_argument("--validation", type=Path, metavar="DATA",
                        help="labelled data for the figures (default: hold out 20%% of --calibration)")
    parser.add_argument("--labels", type=Path, metavar="FILE", help="labels file, one per line")
    parser.add_argument("--task", choices=["classify", "detect", "audio_classify"],
                        help="default: audio_classify for WAV data, else classify")
    parser.add_argument("--name", help="model name in the manifest (default: model file name)")
    parser.add_argument("--version", default="1", help="model version in the manifest (default 1)")
    image = parser.add_argument_group("image preprocessing (the size comes from the model)")
    image.add_argument("--mean", action="append", metavar="M",
                       help="per-channel mean, e.g. 127.5 or 123.7,116.3,103.5 (default 0)")
    image.add_argument("--std", action="append", metavar="S", help="per-channel std (default 1)")
    image.add_argument("--resize", choices=["stretch", "letterbox", "crop"], default="stretch")
    image.add_argument("--color", choices=["rgb", "bgr", "gray"],
                       help="channel order the model expects (default: rgb, gray for 1 channel)")
    image.add_argument("--invert", action="store_true", help="feed 255 - pixel")
    audio = parser.add_argument_group("audio preprocessing")
    audio.add_argument("--sample-rate", type=int, metavar="HZ")
    audio.add_argument("--window", type=float, metavar="S", help="seconds of audio per model input")
    audio.add_argument("--hop", type=float, metavar="S", help="step between windows on the device")
    audio.add_argument("--feature", choices=["waveform", "logmel", "mfcc"])
    audio.add_argument("--frame-length", type=int, metavar="N")
    audio.add_argument("--frame-step", type=int, metavar="N")
    audio.add_argument("--fft-length", type=int, metavar="N")
    audio.add_argument("--n-mels", type=int, metavar="N")
    audio.add_argument("--n-mfcc", type=int, metavar="N")
    audio.add_argument("--fmin", type=float, metavar="HZ")
    audio.add_argument("--fmax", type=float, metavar="HZ")
    quant = parser.add_argument_group("quantisation and checks")
    quant.add_argument("--io", choices=["int8", "uint8", "float32"], default="int8",
                       help="input/output tensor type (default int8)")
    quant.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="PP",
                       help="fail if int8 accuracy is more than PP points below float (default 1.0)")
    quant.add_argument("--strict", action="store_true", help="fail on any op left in float")
    quant.add_argument("--calibration-samples", type=int, default=500, metavar="N",
                       help="use at most N calibration samples (default 500)")
    quant.add_argument("--latency-budget-ms", type=float, metavar="MS",
                       help="smoke-test budget per inference (default 20x measured int8 + 5 ms)")
    quant.add_argument("--activation", choices=["none", "softmax", "sigmoid"],
                       help="activation the device applies to the scores (default: softmax when the "
                            "outputs are not probabilities already, else none; sigmoid for multi-label)")
    quant.add_argument("--detection-format", choices=["tflite_postprocess", "raw_boxes", "yolo"],
                       default="tflite_postprocess", help="for --task detect")
    guard = parser.add_argument_group("safeguards (see docs/converter.md)")
    guard.add_argument("--allow-low-accuracy", action="store_true",
                       help="convert even when float accuracy on labelled validation data is near chance "
                            "(at most 1.5x 1/classes), which usually means double or missing normalisation")
    guard.add_argument("--input-shape", metavar="H,W,C",
                       help="fixed input size (without the batch) for a model with dynamic input "
                            "dimensions such as (None, None, 1), e.g. 32,32,1")
    guard.add_argument("--plots", type=Path, metavar="DIR",
                       help="write confusion_matrix.png and scores_scatter.png (float vs int8) into DIR")
    rescue = parser.add_argument_group("recovery ladder (when int8 misses the targets; see docs/converter.md)")
    rescue.add_argument("--min-agreement", type=float, metavar="FRACTION",
                        help="fail unless int8 agrees with the float model's top-1 on at least this "
                             "fraction of the validation samples, e.g. 0.99")
    rescue.add_argument("--no-ladder", dest="ladder", action="store_false",
                        help="fail at once when plain int8 misses the targets instead of trying better "
                             "calibration and keeping the most sensitive ops in float")
    comp = parser.add_argument_group("compression (fine-tuning in the TensorFlow child; see docs/converter.md)")
    comp.add_argument("--train-data", type=Path, metavar="DATA",
                      help="labelled training data (class folders or .npz with y), same formats as --calibration")
    comp.add_argument("--epochs", type=int, metavar="N",
                      help="fine-tuning epochs (default: qat 3, prune 8, distill 20)")
    comp.add_argument("--qat", action="store_true", help="quantisation-aware training, then int8")
    comp.add_argument("--prune", type=float, metavar="SPARSITY",
                      help="magnitude pruning to SPARSITY (e.g. 0.5) with fine-tuning, then int8")
    comp.add_argument("--prune-block", type=int, metavar="N", default=DEFAULT_PRUNE_BLOCK,
                      help="prune in blocks of N consecutive input channels (runs of zero bytes in the "
                           f"int8 file, which gzip compresses; default {DEFAULT_PRUNE_BLOCK}, 1 = unstructured)")
    comp.add_argument("--distill-from", type=Path, metavar="TEACHER",
                      help="distil the TEACHER (.keras/.h5) into MODEL (the student), then int8")
    comp.add_argument("--student-width", type=float, metavar="W",
                      help="distil MODEL (the teacher) into its own architecture at W x the filters/units")
    comp.add_argument("--logdir", type=Path, metavar="DIR",
                      help="write TensorBoard curves (loss, accuracy, sparsity) of the fine-tuning here")
    out = parser.add_argument_group("output")
    out.add_argument("--sign-key", type=Path, metavar="KEY", help="Ed25519 private key (PEM) to sign the bundle")
    out.add_argument("--report", type=Path, metavar="FILE", help="also write the report as JSON here")
    out.add_argument("--save-float", type=Path, metavar="FILE",
                     help="also write the float TFLite model (for comparisons and benchmarks)")
    out.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def build_inspect_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"{PROG} inspect",
                     description="Print a bundle's manifest summary and verify its checksums and signature.")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--public-key", type=Path, metavar="KEY",
                        help="Ed25519 public key (PEM); a valid signature is then required")
    parser.add_argument("--require-signature", action="store_true",
                        help="exit 2 unless the signature was verified (needs --public-key)")
    return parser


def _golden_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_GOLDEN:
        raise argparse.ArgumentTypeError(f"takes 1 to {MAX_GOLDEN} vectors, got {value}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes milliseconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 disables the check), got {text}")
    return value


def build_wrap_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} wrap",
        description="Make a bundle from an existing TFLite model (float or already quantised) and its "
                    "sidecar, without TensorFlow: manifest from the sidecar and the interpreter, golden "
                    "vectors from this model's own outputs here, then the same verify-and-rename step "
                    "as a conversion. The bundle installs, updates and deploys like a converted one.",
    )
    parser.add_argument("model", type=Path, help=".tflite model file")
    parser.add_argument("--sidecar", type=Path, metavar="FILE",
                        help="sidecar TOML/JSON with task, labels, preprocess and output (as for edge-agent run); "
                             "default: the model's own TFLite metadata")
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help="image or WAV folder (class subfolders allowed) for the golden inputs "
                             "(default: seeded random inputs)")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="BUNDLE", help="bundle file to write")
    parser.add_argument("--sign-key", type=Path, metavar="KEY", help="Ed25519 private key (PEM) to sign the bundle")
    parser.add_argument("--name", help="model name in the manifest (default: the sidecar's, else the file name)")
    parser.add_argument("--version", help="model version in the manifest (default: the sidecar's)")
    parser.add_argument("--golden", type=_golden_count, default=4, metavar="N",
                        help="golden vectors for the on-device smoke test (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random golden inputs (default 0)")
    parser.add_argument("--latency-budget-ms", type=_milliseconds, metavar="MS",
                        help="smoke-test budget per inference (default 20x measured + 5 ms)")
    return parser


def run_wrap(argv: Sequence[str]) -> int:
    args = build_wrap_parser().parse_args(list(argv))
    result = wrap(WrapOptions(
        model=args.model, sidecar=args.sidecar, output=args.output, calibration=args.calibration,
        sign_key=args.sign_key, name=args.name, version=args.version, golden=args.golden, seed=args.seed,
        latency_budget_ms=args.latency_budget_ms,
    ))
    m, report = result.manifest, result.report
    print(f"wrapped {args.model} ({m.task}, {len(m.inputs)} input(s), {len(m.outputs)} output(s)); "
          f"{report['golden_vectors']} golden vector(s) from {report['golden_source']}; "
          f"{report['latency_ms']['1']:.3f} ms per inference here, budget {m.latency_budget_ms:g} ms")
    print(f"wrote {result.output} ({m.name} {m.version}, sha256 {m.short_sha}"
          f"{', signed' if args.sign_key else ''}); smoke test {result.smoke_summary}")
    return 0


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    audio: dict[str, Any] = {
        field: getattr(args, option) for option, field in _AUDIO_OPTIONS.items()
        if getattr(args, option) is not None
    }
    return ConvertOptions(
        model=args.model, calibration=args.calibration, output=args.output,
        validation=args.validation, labels=args.labels, task=args.task, name=args.name,
        version=args.version,
        mean=_floats(args.mean, "--mean") or [0.0], std=_floats(args.std, "--std") or [1.0],
        resize=args.resize, color=args.color, invert=args.invert, audio=audio,
        io=args.io, max_accuracy_drop=args.max_accuracy_drop, strict=args.strict,
        sign_key=args.sign_key, report=args.report, save_float=args.save_float,
        calibration_samples=args.calibration_samples,
        latency_budget_ms=args.latency_budget_ms, detection_format=args.detection_format,
        activation=args.activation,
        allow_low_accuracy=args.allow_low_accuracy, plots=args.plots,
        input_shape=_input_shape(args.input_shape),
        min_agreement=args.min_agreement, ladder=args.ladder,
        compress=CompressOptions(train_data=args.train_data, epochs=args.epochs, qat=args.qat, prune=args.prune,
                                 prune_block=args.prune_block,
                                 distill_from=args.distill_from, student_width=args.student_width,
                                 logdir=args.logdir),
    )


def _input_shape(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return parse_input_shape(text)
    except ShapeError as exc:
        raise ConvertError(str(exc)) from None


def run_inspect(argv: Sequence[str]) -> int:
    args = build_inspect_parser().parse_args(list(argv))
    bundle = read_bundle(args.bundle, args.public_key)
    m = bundle.manifest
    # The checksums only prove the files match the manifest; whoever edits the manifest
    # rewrites them too. Only a verified signature vouches for the manifest itself.
    if bundle.signature_verified:
        signature = "valid (verified with the given public key)"
        integrity = "manifest integrity verified: signed by the given public key"
    elif bundle.signature is not None:
        signature = "present"
        integrity = "signature present, NOT verified (pass --public-key)"
    else:
        signature = "none (unsigned bundle)"
        integrity = "manifest integrity NOT verified: bundle is unsigned (sign with edge-deploy sign / --sign-key)"
    lines = [
        f"bundle      {args.bundle}",
        f"name        {m.name}  version {m.version}  task {m.task}  schema {m.schema_version}",
        f"created     {m.created_utc or 'unknown'}",
        f"model       {m.model.file}  {m.model.size_bytes:,} bytes  sha256 {m.model.sha256}",
        "checksums   OK (model and every file match the manifest)",
        f"signature   {signature}",
        f"integrity   {integrity}",
    ]
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for spec in specs:
            lines.append(f"{kind:<11} {spec.name or '-'} {spec.dtype}{spec.shape} {spec.layout} "
                         f"scale={spec.scale:.6g} zero_point={spec.zero_point}")
    pre = m.preprocess.model_dump(mode="json")
    lines.append("preprocess  " + ", ".join(f"{k}={v}" for k, v in pre.items()))
    labels = bundle.labels
    shown = ", ".join(labels[:20]) + (f", ... ({len(labels)} in all)" if len(labels) > 20 else "")
    lines.append(f"labels      {shown or '(none)'}")
    out = m.output
    lines.append(f"decoding    top_k={out.top_k} activation={out.activation} "
                 f"threshold={out.score_threshold}"
                 + (f" background={','.join(out.background_labels)}" if out.background_labels else "")
                 + (f" detection={out.detection_format}" if out.detection_format else ""))
    lines.append(f"golden      {len(m.golden)} vector(s); latency budget {m.latency_budget_ms:g} ms; "
                 f"min runtime {m.min_runtime_version}")
    if m.converter:
        lines.append("converter   " + ", ".join(f"{k} {v}" for k, v in m.converter.items()))
    if m.validation:
        lines.append("validation  " + ", ".join(f"{k}={v}" for k, v in m.validation.items()))
    print("\n".join(lines))
    if args.require_signature and not bundle.signature_verified:
        print(f"{PROG}: error: {args.bundle}: {integrity}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-convert`` and ``python -m converter``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        if args_list and args_list[0] == "inspect":
            return run_inspect(args_list[1:])
        if args_list and args_list[0] == "wrap":
            return run_wrap(args_list[1:])
        args = build_parser().parse_args(args_list)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        result = convert(options_from_args(args))
    except AccuracyError as exc:
        print_report(exc.report)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SignatureError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConvertError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except EdgeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no bundle written", file=sys.stderr)
        return 130
    print_report(result.report)
    print(f"wrote {result.output} ({result.manifest.name} {result.manifest.version}, sha256 "
          f"{result.manifest.short_sha}); smoke test {result.smoke_summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
