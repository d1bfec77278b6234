"""Reading the backend's objects (jobs, events, models) into our dataclasses: defensively, field by field, since
backends other than OpenAI add fields (the school's trainer) or leave some out. No SDK import: the gateway hands
the SDK's objects here and these read them as plain attributes and dicts."""

from __future__ import annotations

from typing import Protocol

from storage.models import BackendEvent, BackendJob, BackendModel, TrainingSpeed


def flagged_spans(raw: object, length: int) -> tuple[tuple[int, int], ...]:
    """The flagged spans a backend reported, kept only where they are sane offsets into the text."""
    if not isinstance(raw, list):
        return ()
    found = []
    for item in raw:
        pair = (item.get("start"), item.get("end")) if isinstance(item, dict) else item
        if (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(v, int) for v in pair)
                and 0 <= pair[0] < pair[1] <= length):
            found.append((int(pair[0]), int(pair[1])))
    return tuple(found)


class _Identified(Protocol):
    """An SDK object with an id (a job, an event); its other fields are read defensively with getattr."""

    @property
    def id(self) -> str: ...


def backend_job(job: _Identified) -> BackendJob:
    error = getattr(job, "error", None)
    # Healthy jobs carry "error": {} which the SDK turns into a truthy object with None fields.
    error_code = getattr(error, "code", None) if error else None
    hyper = getattr(job, "hyperparameters", None)
    method = getattr(job, "method", None)
    metadata = getattr(job, "metadata", None)
    n_epochs = _int(getattr(hyper, "n_epochs", None))
    if n_epochs is None and method is not None:
        inner = getattr(method, getattr(method, "type", "") or "", None)
        n_epochs = _int(getattr(getattr(inner, "hyperparameters", None), "n_epochs", None))
    return BackendJob(
        id=str(job.id),
        status=str(getattr(job, "status", "") or "unknown"),
        model=str(getattr(job, "model", "") or ""),
        fine_tuned_model=getattr(job, "fine_tuned_model", None),
        trained_tokens=_int(getattr(job, "trained_tokens", None)),
        error_code=str(error_code) if error_code else None,
        error_message=(getattr(error, "message", None) or None) if error_code else None,
        created_at=_int(getattr(job, "created_at", None)) or 0,
        finished_at=_int(getattr(job, "finished_at", None)),
        estimated_finish=_int(getattr(job, "estimated_finish", None)),
        n_epochs=n_epochs,
        training_file=getattr(job, "training_file", None),
        validation_file=getattr(job, "validation_file", None),
        suffix=getattr(job, "user_provided_suffix", None),
        metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else None,
        method=getattr(method, "type", None),
        queue_position=_queue_position(getattr(job, "queue", None)),
    )


def _queue_position(queue: object) -> int | None:
    # The school's trainer adds {"position", "ahead", "estimated_start"} to a waiting job; the SDK keeps the unknown
    # field as a plain dict. Anything else (OpenAI: absent) means no place is known.
    position = _int(queue.get("position")) if isinstance(queue, dict) else None
    return position if position is not None and position >= 1 else None


def backend_event(event: _Identified) -> BackendEvent:
    data = getattr(event, "data", None)
    return BackendEvent(
        id=str(event.id),
        created_at=_int(getattr(event, "created_at", None)) or 0,
        level=str(getattr(event, "level", "info") or "info"),
        message=str(getattr(event, "message", "") or ""),
        type=getattr(event, "type", None),
        data=dict(data) if isinstance(data, dict) else None,
    )


def _int(value: object) -> int | None:
    # n_epochs may be "auto" until the job starts; anything not a whole number is unknown.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def backend_model(model: object) -> BackendModel:
    """A listed model, with the trainer's extra fields when present and well-formed (other backends have none)."""
    status, progress = getattr(model, "status", None), getattr(model, "progress", None)
    languages, seconds = getattr(model, "languages", None), getattr(model, "lesson_seconds", None)
    return BackendModel(
        id=getattr(model, "id", ""), owned_by=getattr(model, "owned_by", None), created=getattr(model, "created", None),
        status=status if isinstance(status, str) else None,
        progress=float(progress) if isinstance(progress, int | float) and not isinstance(progress, bool) else None,
        languages=tuple(str(code) for code in languages) if isinstance(languages, list) else (),
        lesson_seconds=int(seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool) else None,
        training_speed=_training_speed(getattr(model, "training_speed", None)),
    )


def _training_speed(value: object) -> TrainingSpeed | None:
    """The trainer's training_speed extra, when every figure is there and sensible."""
    if not isinstance(value, dict):
        return None
    given = [value.get(key) for key in ("tokens_per_second", "startup_seconds", "wrapup_seconds")]
    numbers = [float(n) for n in given if isinstance(n, int | float) and not isinstance(n, bool) and n >= 0]
    devices = _int(value.get("devices"))
    if len(numbers) != len(given) or not numbers[0] or not devices or devices < 1:
        return None
    rate, startup, wrapup = numbers
    return TrainingSpeed(rate, startup, wrapup, devices, value.get("measured") is True, value.get("trial") is True)
