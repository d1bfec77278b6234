"""One training job in its own process (python -m trainer.worker JOB_ID DEVICE): crashes and cancels stay here."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainer import import_heavy
from trainer.config import Settings
from trainer.cpu_share import SPIN_COUNT, ThreadGovernor, cpu_threads
from trainer.heap import malloc_trim
from trainer.job_records import PAUSED, TIME_LIMIT, DatabaseReporter, model_name, record_result
from trainer.launch import PACKAGE_ROOT
from trainer.lifeline import die_with_parent
from trainer.store import Store
from trainer.timing import LOADING_MESSAGE

log = logging.getLogger(__name__)

# What the worker trains to measure a base model's speed before any job (LongLivedWorker._measure): a shipped lesson,
# 40 examples of 40-90 tokens. Every shipped lesson trained within 10% of the same speed on gemma-3-270m (2026-12-06).
CALIBRATION_LESSON = PACKAGE_ROOT / "lessons" / "pirate-en" / "train.jsonl"
# Steps of that trial, after one that warms up: about 8 s for gemma-3-270m in 2 lanes on 2 cores.
TRIAL_STEPS = 3
PAUSE_SIGNAL = signal.SIGUSR1  # the scheduler's "pause": stop after this step, keeping a checkpoint
_PAUSE_ASKED = threading.Event()


def listen_for_pause() -> None:
    """Turn the pause signal into a flag that the training loop reads after its current step."""
    signal.signal(PAUSE_SIGNAL, lambda _signum, _frame: _PAUSE_ASKED.set())


class StopFlags:
    """Why the training loop should stop: a pause asked by signal, or the wall-clock limit of one run."""

    def __init__(self, max_minutes: float, started: float) -> None:
        self.deadline = started + max_minutes * 60

    def reason(self) -> str | None:
        """The reason to stop now, if any."""
        if _PAUSE_ASKED.is_set():
            return PAUSED
        if time.monotonic() >= self.deadline:
            return TIME_LIMIT
        return None


def run(job_id: str, device: str, started: float | None = None) -> int:
    """Train one job to the end (or to a pause or its time limit) and record the result; return the exit code."""
    # torch, peft and transformers take seconds to import: only here, once main() listens for a pause (a pause
    # signal that came during the import would otherwise end the process).
    import_heavy("trainer.training")
    from trainer.modeling import load_tokenizer, set_threads, turn_end_ids
    from trainer.training import TrainSpec, encode_file, train

    settings = Settings.from_env()
    flags = StopFlags(settings.max_job_minutes, started if started is not None else time.monotonic())
    listen_for_pause()
    store = Store(settings.data_dir / "trainer.db")
    job = store.job(job_id)
    if job is None or job["status"] != "running":
        log.error("Job %s is not running; nothing to do", job_id)
        return 2
    if device == "cpu":
        set_threads(settings.torch_threads)
    hyper = json.loads(job["hyperparameters"])
    # Loading takes a minute on a small machine, before any step: say so, or the job looks stuck.
    store.add_event(job_id, LOADING_MESSAGE)
    tokenizer = load_tokenizer(job["base_source"], settings.tokenizer_cache)
    training_file = store.file(job["training_file"])
    validation_file = store.file(job["validation_file"]) if job["validation_file"] else None
    if training_file is None:
        raise RuntimeError("training file was deleted before the job ran")
    train_set = encode_file(tokenizer, Path(training_file["path"]), settings.max_seq_len, settings.max_example_bytes)
    valid_set = encode_file(tokenizer, Path(validation_file["path"]), settings.max_seq_len,
                            settings.max_example_bytes) if validation_file else []
    checkpoint = store.last_checkpoint(job_id)
    out_dir = settings.adapters_dir(job_id)
    name = model_name(job["model"], settings.owner, job["suffix"], job_id)
    spec = TrainSpec(
        source=job["base_source"], device=device, train=train_set, valid=valid_set, pad_id=tokenizer.pad_token_id,
        n_epochs=int(hyper["n_epochs"]), batch_size=int(hyper["batch_size"]),
        learning_rate=settings.base_learning_rate * float(hyper["learning_rate_multiplier"]), seed=int(job["seed"]),
        lora_r=settings.lora_r, lora_alpha=settings.lora_alpha, out_dir=out_dir,
        resume_from=Path(checkpoint["path"]) if checkpoint is not None else None, should_stop=flags.reason,
        cache_dir=settings.weights_cache, turn_ends=tuple(sorted(turn_end_ids(tokenizer))),
    )
    result = train(spec, DatabaseReporter(store, job, name))
    return record_result(store, settings, job_id, name, result)


class Controls:
    """What the scheduler asked over stdin, read by a thread: jobs to train, jobs to cancel or pause, base models whose
    training speed to measure, the end."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._new: list[str] = []
        self._measures: list[str] = []  # base model sources
        self.handed: dict[str, float] = {}  # job id -> when it was last handed over to train (monotonic seconds)
        self.cancelled: set[str] = set()
        self.paused: set[str] = set()
        self.closed = False

    def listen(self, stream: Any) -> None:
        """Read JSON lines until the scheduler closes stdin (it ended, or it is ending this worker)."""
        for line in stream:
            try:
                command = json.loads(line)
                op = str(command["op"])
                subject = str(command["source"] if op == "measure" else command["job"])
            except (ValueError, KeyError, TypeError):
                log.warning("Ignored a malformed command line (%d bytes)", len(line))
                continue
            self.give(op, subject)
        with self._lock:
            self.closed = True
            self._lock.notify_all()

    def give(self, op: str, subject: str) -> None:
        """Take one command: train, cancel or pause a job (subject: its id), or measure a base model (its source)."""
        with self._lock:
            if op == "measure":
                self._measures.append(subject)
            elif op == "train":  # a job paused or cancelled before may come back resumed: forget that
                self._new.append(subject)
                self.handed[subject] = time.monotonic()
                self.cancelled.discard(subject)
                self.paused.discard(subject)
            elif op == "cancel":
                self.cancelled.add(subject)
            elif op == "pause":
                self.paused.add(subject)
            self._lock.notify_all()

    def take(self, wait: bool) -> list[str]:
        """The jobs handed over since the last call; with wait, block until there is one, a model to measure, or stdin
        closed."""
        with self._lock:
            while wait and not self._new and not self._measures and not self.closed:
                self._lock.wait()
            new, self._new = self._new, []
            return new

    def take_measures(self) -> list[str]:
        """The base models asked to be measured since the last call."""
        with self._lock:
            sources, self._measures = self._measures, []
            return sources


class LongLivedWorker:
    """Trains the jobs handed to it one step of all of them at a time, with each base model loaded once."""

    def __init__(self, device: str, emit: Callable[[dict[str, Any]], None], controls: Controls,
                 threads: ThreadGovernor | None = None) -> None:
        self.device, self.emit, self.controls = device, emit, controls
        self.threads = threads  # on a CPU with threads left to the trainer: each step's, by the cores free now
        self.settings = Settings.from_env()
        self.cpu_threads = cpu_threads(self.settings.torch_threads)  # without a governor: as set
        self.lanes = self.settings.lanes(device)  # groups of jobs stepped side by side, each on its own threads
        self._pool: ThreadPoolExecutor | None = None  # the lanes' threads beside this one, made when first needed
        self.store = Store(self.settings.data_dir / "trainer.db")
        self.bases: dict[str, Any] = {}  # base source -> grouped.SharedBase
        self.ready: dict[str, float] = {}  # base source -> when it finished loading (monotonic seconds)
        self.tokenizers: dict[str, Any] = {}
        self.runs: dict[str, Any] = {}  # job id -> grouped.JobRun, in the order they came
        self.names: dict[str, str] = {}
        self._turn = 0

    def serve(self) -> int:
        """Train until stdin closes; each job's end is told on stdout as {"event": "done", "job": id}."""
        while not self.controls.closed:  # once closed, the server is going: jobs resume from their checkpoints
            self.turn(wait=True)
        return 0

    def turn(self, wait: bool = False) -> bool:
        """Take the jobs handed over (waiting for one when idle and asked to), drop the cancelled ones and train
        one step; say whether jobs are left. Gone idle, it hands the memory training freed back to the system."""
        busy = bool(self.runs)
        for job_id in self.controls.take(wait=wait and not self.runs):
            self._admit(job_id)
        measures = self.controls.take_measures()
        for source in measures:
            self._measure(source)
        self._drop_cancelled()
        if self.runs and not self.controls.closed:
            self._step()
        if not self.runs and (busy or measures):
            # A step's activations (up to GROUP_CHUNK_TOKENS padded tokens a pass) stay in the C heap once freed: the
            # worker held 2.6 GB idle after a practice run on SmolLM2-135M instead of its model's size.
            gc.collect()
            malloc_trim()
        return bool(self.runs)

    def _admit(self, job_id: str) -> None:
        started = time.monotonic()
        try:
            run = self._prepare(job_id, started)
        except Exception:  # boundary: one job's files or checkpoint must not end the worker that trains others
            log.exception("Preparing job %s failed", job_id)
            self._fail(job_id, "its training data or checkpoint could not be read")
            return
        if run is None:
            self.emit({"event": "done", "job": job_id})
        elif run.done:  # resumed after its last epoch: nothing left to train
            self._end(run)
        else:
            self.runs[job_id] = run

    def _prepare(self, job_id: str, started: float) -> Any:
        # The model stack (torch: seconds), imported on the first job, not while the worker starts.
        import_heavy("trainer.grouped")
        from trainer.grouped import start_run
        from trainer.modeling import turn_end_ids
        from trainer.training import TrainSpec, encode_file

        handed = self.controls.handed.pop(job_id, math.inf)
        job = self.store.job(job_id)
        if job is None or job["status"] != "running":
            return None
        settings, source = self.settings, job["base_source"]
        if source not in self.bases or handed < self.ready.get(source, 0.0):
            # Loading its base, or handed over while another job's start loaded it: either way its start waits for
            # the load, a cold start to trainer.timing (counted warm, a lane's second job put 6 s on every later one).
            self.store.add_event(job_id, LOADING_MESSAGE, only_if=("running",))
        tokenizer = self._load(source)
        hyper = json.loads(job["hyperparameters"])
        training_file = self.store.file(job["training_file"])
        validation_file = self.store.file(job["validation_file"]) if job["validation_file"] else None
        if training_file is None:
            raise RuntimeError("training file was deleted before the job ran")
        train_set = encode_file(tokenizer, Path(training_file["path"]), settings.max_seq_len,
                                settings.max_example_bytes)
        valid_set = encode_file(tokenizer, Path(validation_file["path"]), settings.max_seq_len,
                                settings.max_example_bytes) if validation_file else []
        checkpoint = self.store.last_checkpoint(job_id)
        name = model_name(job["model"], settings.owner, job["suffix"], job_id)
        deadline = started + settings.max_job_minutes * 60

        def should_stop() -> str | None:
            if job_id in self.controls.paused:
                return PAUSED
            return TIME_LIMIT if time.monotonic() >= deadline else None

        spec = TrainSpec(
            source=source, device=self.device, train=train_set, valid=valid_set, pad_id=tokenizer.pad_token_id,
            n_epochs=int(hyper["n_epochs"]), batch_size=int(hyper["batch_size"]),
            learning_rate=settings.base_learning_rate * float(hyper["learning_rate_multiplier"]),
            seed=int(job["seed"]), lora_r=settings.lora_r, lora_alpha=settings.lora_alpha,
            out_dir=settings.adapters_dir(job_id),
            resume_from=Path(checkpoint["path"]) if checkpoint is not None else None, should_stop=should_stop,
            turn_ends=tuple(sorted(turn_end_ids(tokenizer))),
        )
        self.names[job_id] = name
        return start_run(self.bases[source], job_id, spec, DatabaseReporter(self.store, job, name))

    def _load(self, source: str) -> Any:
        """Load a base model for training, once (dropping those no job trains); return its tokenizer."""
        import_heavy("trainer.grouped")  # the model stack (torch: seconds), imported when first needed
        from trainer.grouped import SharedBase
        from trainer.modeling import load_tokenizer, training_matmul_dtype

        if source not in self.bases:
            idle = [other for other in self.bases if all(run.spec.source != other for run in self.runs.values())]
            for other in idle:  # one base model in memory per base that has jobs (a 0.5B model is 2 GB)
                del self.bases[other]
            self.tokenizers[source] = load_tokenizer(source, self.settings.tokenizer_cache)
            self.bases[source] = SharedBase(source, self.device, self.settings.weights_cache,
                                            matmul_dtype=training_matmul_dtype(self.device,
                                                                               self.settings.train_precision))
            self.ready[source] = time.monotonic()
        return self.tokenizers[source]

    def _measure(self, source: str) -> None:
        """Time a short trial of the calibration lesson on a base model, loading it, and tell the scheduler its
        trained tokens a second ({"event": "speed"}): the queue's first guess on this machine, in the arithmetic,
        threads, lanes and code that train a class (as many jobs as fill the lanes). Skipped while jobs train (their
        own steps are measured)."""
        if self.runs:
            return
        import_heavy("trainer.grouped")
        from trainer.grouped import Unrecorded, start_run
        from trainer.modeling import turn_end_ids
        from trainer.training import TrainSpec, encode_file

        try:
            self._threads_now(lanes=self.lanes)  # the governor's first reading of the machine starts as the model loads
            tokenizer = self._load(source)
            examples = encode_file(tokenizer, CALIBRATION_LESSON, self.settings.max_seq_len)
            runs = [start_run(self.bases[source], f"trial-{number}", TrainSpec(
                source=source, device=self.device, train=examples, valid=[], pad_id=tokenizer.pad_token_id,
                n_epochs=1, batch_size=self.settings.default_batch_size,
                learning_rate=self.settings.base_learning_rate, seed=number, lora_r=self.settings.lora_r,
                lora_alpha=self.settings.lora_alpha, out_dir=self.settings.data_dir / "trial",
                turn_ends=tuple(sorted(turn_end_ids(tokenizer)))), Unrecorded())
                for number in range(self.lanes * max(1, self.settings.group_jobs))]  # as many as a class fills
            tokens_per_second, seconds = self._trial(self.bases[source], runs)
        except Exception:  # boundary: the queue keeps its guess from the forward pass; the jobs train on
            log.exception("Measuring the training speed of %s failed", source)
            return
        log.info("Training speed of %s on this machine: %.0f tokens a second (a trial of the calibration lesson)",
                 source, tokens_per_second)
        self.emit({"event": "speed", "source": source, "seconds_per_token": 1.0 / tokens_per_second,
                   "seconds": seconds})

    def _trial(self, base: Any, runs: list[Any]) -> tuple[float, float]:
        """Trained tokens a second of these runs stepped as a class's jobs are (in the lanes), and the seconds that
        took: TRIAL_STEPS steps after one that warms up. Nothing of them is saved or recorded."""
        seconds, tokens = 0.0, 0
        for step in range(TRIAL_STEPS + 1):
            started = time.perf_counter()
            stepped = self._step_in_lanes(base, runs)
            took = time.perf_counter() - started
            if any(failed for _, failed, _ in stepped):
                raise RuntimeError("a step of the trial failed")
            if step:
                seconds += took
                tokens += sum(outcome.tokens for pairs, _, _ in stepped for _, outcome in pairs)
            for run in runs:
                run.index = (run.index + 1) % len(run.epoch_batches)
        return tokens / seconds, seconds

    def _drop_cancelled(self) -> None:
        for job_id in [job_id for job_id in self.runs if job_id in self.controls.cancelled]:
            del self.runs[job_id]
            log.info("Job %s cancelled; the others train on", job_id)
            self.emit({"event": "done", "job": job_id})

    def _step(self) -> None:
        """One step of every job on one base model (taking the bases in turn): in one batched pass, or on a CPU with
        cores enough in lanes side by side, each lane's jobs on its own share of the threads."""
        from trainer.grouped import after_step  # imported by _prepare already (import_heavy)

        sources = sorted({run.spec.source for run in self.runs.values()})
        source = sources[self._turn % len(sources)]
        self._turn += 1
        base = self.bases[source]
        stepped = self._step_in_lanes(base, [run for run in self.runs.values() if run.spec.source == source])
        tokens = sum(outcome.tokens for pairs, _, _ in stepped for _, outcome in pairs)
        for pairs, failed, seconds in stepped:
            for run in failed:
                del self.runs[run.job_id]
                self._fail(run.job_id, "a training step failed")
            for run, outcome in pairs:
                if run.job_id in self.controls.cancelled:
                    continue  # dropped before the next step, with nothing more recorded
                run.reporter.share = outcome.tokens / max(1, tokens)
                try:
                    after_step(base, run, outcome, seconds)
                except Exception:  # boundary: saving or reporting one job must not stop the others
                    log.exception("Recording a step of job %s failed", run.job_id)
                    del self.runs[run.job_id]
                    self._fail(run.job_id, "its checkpoint could not be saved")
                    continue
                if run.done:
                    del self.runs[run.job_id]
                    self._end(run)

    def _step_in_lanes(self, base: Any, group: list[Any]) -> list[tuple[list[tuple[Any, Any]], list[Any], float]]:
        """One step of a group of jobs on one base model: in one batched pass, or on a CPU with cores enough in lanes
        side by side, each lane's jobs on its own share of the threads; each lane's _lane_step result."""
        from trainer.grouped import GROUP_CHUNK_TOKENS  # imported by _prepare already (import_heavy)

        threads = self._threads_now(lanes=min(self.lanes, len(group)))
        count = min(self.lanes, len(group), threads or 1)
        lanes = [group[index::count] for index in range(count)]
        each = max(1, threads // count) if threads else None
        # The lanes share the activations' bound (GROUP_CHUNK_TOKENS padded tokens a pass): the worker's memory stays
        # what one pass needed, however many lanes (a lesson's batch of ~250 tokens is one pass either way).
        chunk = max(1, GROUP_CHUNK_TOKENS // count)
        if count == 1:
            return [self._lane_step(base, group, each, chunk)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.lanes - 1, thread_name_prefix="lane")
        others = [self._pool.submit(self._lane_step, base, lane, each, chunk) for lane in lanes[1:]]
        return [self._lane_step(base, lanes[0], each, chunk)] + [future.result() for future in others]

    def _threads_now(self, lanes: int) -> int:
        """The threads training may take for this step of up to `lanes` lanes (0 on a GPU): those the governor finds
        free, else as set."""
        if self.device != "cpu":
            return 0
        if self.threads is None:
            return self.cpu_threads
        before, threads = self.threads.threads, self.threads.choose(lanes)
        if threads != before:
            log.info("Training on %d of %d threads now, by the cores other programs leave free", threads,
                     self.threads.most)
        return threads

    def _lane_step(self, base: Any, group: list[Any], threads: int | None,
                   chunk: int) -> tuple[list[tuple[Any, Any]], list[Any], float]:
        """One step of a lane's jobs on this thread, in passes of at most `chunk` padded tokens: (run, outcome)
        pairs, the runs that failed, the seconds taken. Touches no store: the worker's own thread records what the
        lanes did."""
        from trainer.grouped import group_step  # imported by _prepare already (import_heavy)

        if threads is not None:
            self._use_threads(threads)
        pad_id = group[0].spec.pad_id
        started = time.perf_counter()
        failed = []
        try:
            pairs = list(zip(group, group_step(base, group, pad_id, chunk), strict=True))
        except Exception:  # boundary: a step that fails is retried job by job, so only a job that fails alone fails
            log.exception("A group step of %d jobs failed; retrying them one by one", len(group))
            pairs = []
            for run in group:
                run.optimizer.zero_grad(set_to_none=True)
            for run in group:
                try:
                    pairs += list(zip([run], group_step(base, [run], pad_id, chunk), strict=True))
                except Exception:  # boundary: this job alone fails
                    log.exception("Job %s failed its step alone", run.job_id)
                    run.optimizer.zero_grad(set_to_none=True)
                    failed.append(run)
        return pairs, failed, time.perf_counter() - started

    def _use_threads(self, threads: int) -> None:
        """Set this thread's torch threads (each lane's thread keeps its own count)."""
        import torch  # loaded with the first job's base model (import_heavy)

        if threads != torch.get_num_threads():
            log.debug("Training with %d threads on %s", threads, threading.current_thread().name)
            torch.set_num_threads(threads)

    def _end(self, run: Any) -> None:
        assert run.result is not None
        try:
            record_result(self.store, self.settings, run.job_id, self.names[run.job_id], run.result)
        except Exception:  # boundary: a job whose result cannot be written fails alone
            log.exception("Recording the result of job %s failed", run.job_id)
            self._fail(run.job_id, "its result could not be saved")
            return
        self.controls.paused.discard(run.job_id)
        self.emit({"event": "done", "job": run.job_id})

    def _fail(self, job_id: str, why: str) -> None:
        message = f"Training stopped unexpectedly ({why}); start the job again"
        if self.store.update_job(job_id, only_if=("running", "paused"), status="failed", finished_at=int(time.time()),
                                 estimated_finish=None,
                                 error={"code": "server_error", "message": message, "param": None}):
            self.store.add_event(job_id, message, level="error")
        self.emit({"event": "done", "job": job_id})


def serve(device: str) -> int:
    """Entry point of python -m trainer.worker --serve DEVICE: a worker that trains job after job, and several at once.

    Commands come as JSON lines on stdin ({"op": "train" | "cancel" | "pause", "job": id}); the end of each job is
    told on stdout. Everything else the process prints goes to stderr (its log): stdout carries the protocol only.
    """
    if device == "cpu":  # before OpenMP loads with torch: threads spin a moment between operations (cpu_share),
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT  # not the server's longer spin, which the worker inherits
    # modeling imports torch (seconds): after main() listens for a pause.
    import_heavy("trainer.modeling")
    from trainer.modeling import set_threads

    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print cannot break the protocol

    def emit(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    governor = None
    if device == "cpu":
        configured = Settings.from_env().torch_threads
        threads = set_threads(configured)
        governor = None if configured else ThreadGovernor(threads)  # TRAINER_TORCH_THREADS set: exactly that
    controls = Controls()
    threading.Thread(target=controls.listen, args=(sys.stdin,), daemon=True, name="commands").start()
    worker = LongLivedWorker(device, emit, controls, governor)
    emit({"event": "ready", "pid": os.getpid()})
    return worker.serve()


def main() -> None:
    """Entry point of python -m trainer.worker (JOB_ID DEVICE: one job; --serve DEVICE: the long-lived worker)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    listen_for_pause()  # first: a pause sent while this process still starts must not kill it
    die_with_parent()
    if len(sys.argv) != 3:
        print("usage: python -m trainer.worker JOB_ID DEVICE | --serve DEVICE", file=sys.stderr)
        sys.exit(2)
    code = serve(sys.argv[2]) if sys.argv[1] == "--serve" else run(sys.argv[1], sys.argv[2], started)
    # The outcome is recorded: end now. Tearing down torch and the model at interpreter exit took from seconds to
    # a minute on a loaded machine, all that time holding the device the next job waits for.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
