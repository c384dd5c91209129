"""Tasks by manifest task name: classify, detect, audio_classify."""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.model.manifest import Manifest, TensorSpec
from edge_agent.tasks.base import Result, Task

__all__ = ["TASKS", "Result", "Task", "create_task"]

TaskFactory = Callable[[Manifest, list[str], list[TensorSpec], list[TensorSpec]], Task]


def _classify(m: Manifest, labels: list[str], i: list[TensorSpec], o: list[TensorSpec]) -> Task:
    from edge_agent.tasks.classify import ClassifyTask

    return ClassifyTask(m, labels, i, o)


def _detect(m: Manifest, labels: list[str], i: list[TensorSpec], o: list[TensorSpec]) -> Task:
    from edge_agent.tasks.detect import DetectTask

    return DetectTask(m, labels, i, o)


def _audio(m: Manifest, labels: list[str], i: list[TensorSpec], o: list[TensorSpec]) -> Task:
    from edge_agent.tasks.audio import AudioTask

    return AudioTask(m, labels, i, o)


TASKS: dict[str, TaskFactory] = {"classify": _classify, "detect": _detect, "audio_classify": _audio}


def create_task(manifest: Manifest, labels: list[str], inputs: list[TensorSpec],
                outputs: list[TensorSpec]) -> Task:
    """Task for the manifest's task name; ValueError for an unknown one."""
    try:
        factory = TASKS[manifest.task]
    except KeyError:
        raise ValueError(f"unknown task {manifest.task!r}; choose one of {sorted(TASKS)}") from None
    return factory(manifest, labels, inputs, outputs)
