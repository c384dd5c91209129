"""Whether a new model can take the place of the running one: one rule for the store and the agent.

Two questions, one owner:

- :func:`source_differences` — what a running source cannot change under a hot swap: the kind
  of input (image or audio) and, for audio, the sample rate, window and hop the microphone or
  WAV reader was opened with. The agent refuses such a swap and keeps the old model.
- :func:`input_differences` — what the store refuses at install unless told
  ``--allow-new-input``: the above, plus the input tensor's shape and the image size, which
  the device's configuration was set up for.
"""

from __future__ import annotations

import re

from edge_agent.model.manifest import AudioPreprocess, ImagePreprocess, Manifest


def source_differences(old: Manifest, new: Manifest) -> list[str]:
    """Why ``new`` cannot take the input the source gives ``old``; empty when it can."""
    a, b = old.preprocess, new.preprocess
    if a.kind != b.kind:
        return [f"{b.kind} input instead of {a.kind}"]
    if isinstance(a, AudioPreprocess) and isinstance(b, AudioPreprocess):
        if a.sample_rate != b.sample_rate:
            return [f"sample rate {b.sample_rate} != {a.sample_rate}"]
        if (a.window_samples, a.hop_samples) != (b.window_samples, b.hop_samples):
            return [f"audio window/hop {b.window_samples}/{b.hop_samples} != {a.window_samples}/{a.hop_samples}"]
    return []


def input_differences(old: Manifest, new: Manifest) -> list[str]:
    """Why ``new`` does not fit the input ``old`` was deployed for; empty when it fits."""
    problems = []
    if list(new.inputs[0].shape) != list(old.inputs[0].shape):
        problems.append(f"input shape {new.inputs[0].shape} != {old.inputs[0].shape}")
    a, b = old.preprocess, new.preprocess
    if isinstance(a, ImagePreprocess) and isinstance(b, ImagePreprocess):
        if (b.width, b.height, b.channels) != (a.width, a.height, a.channels):
            problems.append(f"image {b.width}x{b.height}x{b.channels} != {a.width}x{a.height}x{a.channels}")
    else:
        problems.extend(source_differences(old, new))
    return problems


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Sort key of a model version: numeric parts compare as numbers ("1.10" > "1.9")."""
    parts = re.split(r"[.\-+]", version)
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in parts)


def is_downgrade(old: Manifest, new: Manifest) -> bool:
    """``new`` is an older version of the same model."""
    return new.name == old.name and version_key(new.version) < version_key(old.version)
