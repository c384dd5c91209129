"""Start a verified model the one way ``edge-agent run`` does: the interpreter, then the task that
checks labels, preprocessing and outputs against it. The install smoke test (in its child) and
``edge-agent check`` call the same function, so whatever the store accepts the agent can start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.errors import BundleError
from edge_agent.model.loader import LoadedModel, ModelFile, open_model
from edge_agent.schema import ValidationError

if TYPE_CHECKING:  # the tasks import OpenCV: loaded only when a model starts
    from edge_agent.tasks import Task


@dataclass(frozen=True)
class StartedModel:
    """A loaded model and the task that decodes it (not yet configured with runtime settings)."""

    model: LoadedModel
    task: Task

    def close(self) -> None:
        self.model.runtime.close()


def start_model(
    verified: ModelFile,
    threads: int = 1,
    delegate: str | None = None,
    delegate_options: dict[str, str] | None = None,
    runtime_kind: str = "litert",
) -> StartedModel:
    """Open the interpreter for ``verified`` and create its task.

    Raises:
        BundleError: the model's description does not fit it (labels, preprocessing, outputs,
            a tensor type the agent does not handle).
        RuntimeLoadError: the interpreter or delegate cannot load it.
    """
    from edge_agent.tasks import create_task

    try:
        model = open_model(verified, threads, delegate, delegate_options, runtime_kind)
    except ValidationError as exc:  # a tensor spec the agent cannot describe (dtype)
        raise BundleError(f"{verified.path}: a tensor has a type the agent does not support "
                          f"({exc.first['msg']})") from exc
    try:
        task = create_task(model.manifest, model.labels, model.runtime.inputs, model.runtime.outputs)
    except (TypeError, ValueError, ArithmeticError) as exc:
        model.runtime.close()
        raise BundleError(f"{model.path}: {exc}") from exc
    except BaseException:
        model.runtime.close()
        raise
    return StartedModel(model, task)
