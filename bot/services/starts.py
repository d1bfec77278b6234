"""Starting a fine-tuning job, as one use case: prepare gives a card, Start gives an outcome, a teacher decides.

What waits between the steps (the request, the estimate, the staged file, the expiry) is a row plus a file under
the data directory, so Start buttons and approvals survive a restart. Money is crash-safe: the reservation and a
client token are written before the backend is called, the token goes into the job's metadata, and once the
backend created a job nothing voids its reservation; a reservation a killed bot left behind is matched to its job
(or voided) by token at the next start."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot import errors
from bot.config import Settings
from bot.openai_gateway import FineTuningGateway
from bot.services import staging, start_backend
from bot.services.dataset_check import CheckResult, CheckTooSlowError, DatasetCheckService
from bot.services.governance.moderation import ContentFlaggedError
from bot.services.groups import GroupService
from bot.services.start_housekeeping import APPROVAL_TTL_SECONDS, TOKEN_KEY, StartHousekeeping
from bot.services.start_outcomes import (
    Allowed,
    AwaitingApproval,
    Decision,
    Flagged,
    Outcome,
    Prepared,
    Refused,
    StartPolicy,
    StartRequest,
    Started,
    Upload,
)
from bot.services.workers import CpuWorkers
from dataset_rules.models import lookup as lookup_model
from storage.groups import Group
from storage.jobs import JobRepository
from storage.models import Approval, BackendJob, ClassSettings, Job, NewJob, Reservation
from common.private import make_private_dir, narrow_modes
from storage.starts import PendingStart, StartRepository

log = logging.getLogger(__name__)

PENDING_TTL_SECONDS = 15 * 60
# Cards one student may have waiting for Start at once: each holds a checked (maybe converted) file on disk.
WAITING_CARDS_MAX = 2
# A dataset check (a CSV's conversion included) that takes longer is stopped: the worker is shared by the class.
CHECK_TIME_LIMIT_SECONDS = 60.0
# A trainer that has just started may still be loading a tokenizer: past this, the card keeps tiktoken's estimate.
BACKEND_COUNT_SECONDS = 20.0
# A lesson's class presses Start within this long of its teacher opening it; a Start later is not its first.
LESSON_OPENING_SECONDS = 30 * 60


class StartService(StartHousekeeping):
    """Prepare, press Start, decide: the whole start of a job, with its waiting state in SQLite."""

    def __init__(
        self,
        settings: Settings,
        repo: StartRepository,
        jobs: JobRepository,
        gateway: FineTuningGateway,
        checker: DatasetCheckService,
        workers: CpuWorkers,
        policy: StartPolicy,
        adopt: Callable[[Collection[int]], Awaitable[list[Job]]],
        base_models: Callable[[], Awaitable[list[str]]],
        *,
        staging_dir: Path | None = None,
        groups: GroupService | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.jobs = jobs
        self.gateway = gateway
        self.checker = checker
        self.workers = workers
        self.policy = policy
        # Records (and charges) jobs the backend ran under our metadata that we never wrote down.
        self.adopt = adopt
        # The base models the backend lists (cached by the caller).
        self.base_models = base_models
        # One model per group when the teacher turned groups on: a group trains one job at a time.
        self.groups = groups
        self._group_starts: set[tuple[int, str]] = set()  # groups whose Start is under way in this process
        self.staging_dir = staging_dir or staging.default_dir(settings.database_path)
        # Students' files wait here for Start: this account's only (the school's computer has other accounts).
        make_private_dir(self.staging_dir)
        narrow_modes(self.staging_dir)
        # Tokens whose start is running in this process: reconciling must not void a reservation mid-upload.
        self._in_flight: set[str] = set()
        self._expiries: set[asyncio.Task[None]] = set()  # cards' timers: each file goes the moment its card expires
        self._checking: set[tuple[int, int]] = set()
        self._deciding: set[str] = set()  # approvals being started in this process (a teacher's click or the sweep)
        # Lessons their teacher just opened, by server: when (monotonic) and how many jobs the class is to start.
        self._lessons_opened: dict[int, tuple[float, int]] = {}

    # Before the click ---------------------------------------------------------------------------------------

    async def prepare(self, request: StartRequest, training: Upload, validation: Upload | None) -> Prepared:
        """Check the file(s) off the event loop; a startable file waits on disk, as a row, for Start."""
        limit = self.settings.max_training_file_bytes
        for upload in (training, validation):
            if upload is not None and len(upload.data) > limit:
                raise errors.AttachmentError(
                    "error.attachment_too_large", name=upload.filename, limit_mb=limit // 2**20
                )
        await self._check_base_model(request)
        await self._check_waiting_cards(request)
        if self.groups is not None:
            await self.groups.check_before_card(request.guild_id, request.user_id)
        # One check per student at a time: the check workers are shared by the whole class.
        student = (request.guild_id, request.user_id)
        if student in self._checking:
            raise errors.UserFacingError("error.check_running")
        self._checking.add(student)
        try:
            check = await self.workers.run(
                self.checker.check_bytes,
                training.data,
                training.filename,
                validation=(validation.data, validation.filename) if validation else None,
                model=request.base_model,
                n_epochs=request.n_epochs,
                time_limit_seconds=CHECK_TIME_LIMIT_SECONDS,
            )
        except CheckTooSlowError:
            log.warning("Check of a %d-byte file for user %s stopped at the time limit", len(training.data),
                        request.user_id)
            raise errors.AttachmentError("error.check_too_slow", name=training.filename) from None
        finally:
            self._checking.discard(student)
        if not check.report.ok:
            return Prepared(check, None)
        # The check's one parse of the file gave its system prompt and its conversations too.
        prompt = check.system_prompt
        check, counted = await self._count_on_backend(check, request.base_model, check.conversations)
        if (self.settings.backend == "trainer" or counted) and check.report.estimated_cost_usd is None:
            # The school's own trainer charges nothing, whether this bot runs it or it runs elsewhere behind a URL
            # (only it counts tokens in its own tokenizer): the card says free, not "no price known".
            check = replace(check, report=replace(check.report, estimated_cost_usd=0.0))
        check = await self._class_priced(check, request)
        token = secrets.token_hex(8)
        training_name, training_path = await staging.stage(self.staging_dir, token, "training", training.filename,
                                                                   training.data, check.converted_jsonl)
        validation_name = validation_path = None
        if validation is not None:
            validation_name, validation_path = await staging.stage(self.staging_dir, token, "validation", validation.filename,
                                                                     validation.data,
                                                                 check.converted_validation)
        report, now = check.report, int(time.time())
        pending = PendingStart(
            token=token, guild_id=request.guild_id, channel_id=request.channel_id, user_id=request.user_id,
            is_teacher=request.is_teacher, base_model=request.base_model, n_epochs=request.n_epochs,
            suffix=request.suffix, method=report.method or "supervised", training_filename=training.filename,
            training_name=training_name, training_path=training_path, validation_name=validation_name,
            validation_path=validation_path, examples=report.examples, tokens_billed=report.tokens_billed,
            report_epochs=report.n_epochs, estimated_usd=report.estimated_cost_usd, cleared=False, state="waiting",
            claimed=False, created_at=now, expires_at=now + PENDING_TTL_SECONDS, training_prompt=prompt,
        )
        try:
            await self.repo.add(pending)
        except BaseException:
            staging.remove_files(pending)  # no row, no file: nothing a student sent lingers unreferenced
            raise
        self.expire_later(pending.token, pending.expires_at)
        return Prepared(check, pending)

    async def _count_on_backend(self, check: CheckResult, model: str,
                                conversations: list[list[dict[str, Any]]]) -> tuple[CheckResult, bool]:
        """On a self-hosted trainer, count tokens in the base model's own tokenizer and chat template (what it will
        train on); OpenAI's tokenizer, which the check used, is off by up to 3x for Korean on other models. Whether
        the backend counted them (the school's trainer does; other backends have no such route)."""
        if not self.settings.self_hosted or check.report.format != "chat" or not conversations:
            return check, False
        try:
            counts = await asyncio.wait_for(self.gateway.count_chat_tokens(model, conversations),
                                            BACKEND_COUNT_SECONDS)
        except (errors.UserFacingError, TimeoutError):
            log.info("The backend could not count tokens in time; the card keeps the estimate")
            return check, False
        total = sum(counts)
        report = replace(check.report, tokens_total=total, tokens_billed=total * (check.report.n_epochs or 0),
                         max_example_tokens=max(counts))
        return replace(check, report=report), True

    async def _class_priced(self, check: CheckResult, request: StartRequest) -> CheckResult:
        """A model the table does not price, priced by the class's teacher (/class price): the card shows that cost,
        and the start holds it (as Start would charge it)."""
        if check.report.estimated_cost_usd is not None:
            return check
        price = await self.policy.class_training_price(request.guild_id, request.base_model)
        if price is None:
            return check
        cost = check.report.tokens_billed * price / 1_000_000
        return replace(check, report=replace(check.report, estimated_cost_usd=cost))

    async def _check_waiting_cards(self, request: StartRequest) -> None:
        """A student holds at most WAITING_CARDS_MAX cards waiting for Start (each holds a checked file on disk)."""
        if request.is_teacher:
            return
        now = time.time()
        waiting = [p for p in await self.repo.for_user(request.guild_id, request.user_id)
                   if p.state == "waiting" and not p.claimed and p.expires_at > now]
        if len(waiting) >= WAITING_CARDS_MAX:
            raise errors.UserFacingError("error.too_many_cards", count=len(waiting))

    async def _check_base_model(self, request: StartRequest) -> None:
        # A base model the backend lists, or a model this server fine-tuned: never another server's model.
        name = request.base_model
        if name.startswith("ft:"):
            own = await self.jobs.for_guild(request.guild_id, search=name, limit=25)
            if any(job.fine_tuned_model == name for job in own):
                return
            raise errors.UserFacingError("error.base_model_not_ours", model=name)
        listed = await self.base_models()
        info = lookup_model(name)
        if name in listed or (info is not None and (info.name in listed or info.retired())):
            return  # a retired one is checked on: the card says plainly that it shut down
        raise errors.UserFacingError("error.base_model_unknown", model=name)

    async def cancel(self, token: str, user_id: int) -> None:
        """The requester pressed Cancel: forget the start and its file."""
        pending = await self._owned(token, user_id)
        if pending.claimed:
            raise errors.UserFacingError("error.start_in_progress")
        await self._forget(token)

    async def pending(self, token: str) -> PendingStart | None:
        """A start still waiting, if any (expired ones count as gone)."""
        found = await self.repo.get(token)
        return found if found is not None and found.expires_at > time.time() else None

    # The click ---------------------------------------------------------------------------------------------

    async def press(self, token: str, user_id: int) -> Outcome:
        """The requester pressed Start: a student's start goes to a teacher when approvals are on."""
        if await self.pending(token) is None:
            # An old card of a start whose job exists (found by its token after a crash): it trains; starting
            # again would make a second paid job.
            job = await self.policy.job_of_token(token)
            if job is not None:
                return Started(job, earlier=True)
        try:
            pending = await self._owned(token, user_id)
            if pending.state != "waiting":
                raise errors.UserFacingError("gov.approval.sent")
            settings = await self.policy.settings(pending.guild_id)  # once for the whole click
            if await self.policy.needs_approval(pending.guild_id, is_teacher=pending.is_teacher, settings=settings):
                return await self._send_for_approval(pending, settings)
        except errors.UserFacingError as exc:
            return Refused(exc, retry=isinstance(exc, errors.UpstreamBusyError | errors.NotAllowedError))
        return await self._start(pending, settings)

    async def _send_for_approval(self, pending: PendingStart, settings: ClassSettings) -> Outcome:
        if not await self.repo.claim(pending.token):
            return Refused(errors.UserFacingError("error.start_in_progress"), retry=True)
        try:
            pending = await self._moderated(pending, settings)
            approval = await self.policy.request_approval(pending, settings)
        except ContentFlaggedError as exc:
            return await self._held_for_review(pending, exc)
        except errors.UpstreamBusyError as exc:
            await self.repo.release(pending.token)
            return Refused(exc, retry=True)
        except errors.UserFacingError as exc:
            await self._forget(pending.token)
            return Refused(exc)
        except BaseException:
            await self.repo.release(pending.token)
            raise
        await self.repo.await_approval(pending.token, int(time.time()) + APPROVAL_TTL_SECONDS)
        return AwaitingApproval(approval)

    async def decide(self, guild_id: int, approval_id: str, teacher_id: int, *, approve: bool) -> Decision:
        """A teacher approved or rejected (once); an approval starts through the same path as Start. An approved
        start a stopped bot never finished (no job, its file still waiting) is finished by pressing Approve again,
        or by the sweep after the restart (resume_approved), whichever comes first."""
        if approval_id in self._deciding:  # the sweep (or another teacher's click) is starting it this moment
            raise errors.UserFacingError("error.start_in_progress")
        self._deciding.add(approval_id)
        try:
            try:
                approval = await self.policy.decide(guild_id, approval_id, teacher_id, approve=approve)
            except errors.UserFacingError:
                approval = await self.policy.approval(guild_id, approval_id)
                pending = await self.pending(approval.pending_token)
                if not (approve and approval.status == "approved" and approval.job_id is None and pending is not None):
                    raise
                if pending.claimed or approval.pending_token in self._in_flight:
                    # Under way here, or claimed by a killed bot whose job the housekeeping has not looked for yet:
                    # the sweep after it finishes the start; ending it here would drop an approved start.
                    raise errors.UserFacingError("error.start_in_progress") from None
                log.info("Resuming approved start %s: the bot stopped before it started", approval_id)
            if not approve:
                await self._forget(approval.pending_token)
                return Decision(approval, approved=False)
            decision = await self._finish_approved(approval, sweeping=False)
            assert decision is not None  # only the sweep leaves a start for later
            return decision
        finally:
            self._deciding.discard(approval_id)

    async def resume_approved(self) -> list[Decision]:
        """After a restart: approved starts the stopped bot never finished are started now, tied to the job a crash
        left them, or ended truthfully (their file expired); a busy backend leaves them to the next sweep. Run after
        reconcile(), which frees the starts a killed bot had claimed."""
        decisions = []
        for approval in await self.policy.unfinished_approvals(int(time.time()) - APPROVAL_TTL_SECONDS):
            if approval.id in self._deciding or approval.pending_token in self._in_flight:
                continue  # a teacher's click in this process is starting it
            row = await self.repo.get(approval.pending_token)
            if row is not None and row.claimed:
                continue  # a killed bot's claim reconcile() has not settled (the backend did not answer): later
            self._deciding.add(approval.id)
            try:
                decision = await self._finish_approved(approval, sweeping=True)
            finally:
                self._deciding.discard(approval.id)
            if decision is not None:
                log.info("Approved start %s finished after a restart (job %s)", approval.id,
                         decision.job.id if decision.job else None)
                decisions.append(decision)
        return decisions

    async def _finish_approved(self, approval: Approval, *, sweeping: bool) -> Decision | None:
        pending = await self.pending(approval.pending_token)
        outcome: Outcome
        if pending is not None:
            outcome = await self._start(pending)
        else:  # gone: its job was made (and adopted after a crash), or its file expired
            job = await self.policy.job_of_token(approval.pending_token)
            outcome = (Started(job, earlier=True) if job is not None
                       else Refused(errors.UserFacingError("gov.error.approval_expired")))
        if isinstance(outcome, Started):
            await self.policy.finish_approval(approval, job_id=outcome.job.id, status="approved")
            return Decision(approval, approved=True, job=outcome.job)
        if sweeping and isinstance(outcome, Refused) and outcome.retry:
            return None  # a busy backend, or a job that may exist: the next sweep looks again
        if isinstance(outcome, Flagged | AwaitingApproval):  # cleared before the request: only if data changed
            outcome = Refused(outcome.error if isinstance(outcome, Flagged) else errors.UserFacingError())
        await self.policy.finish_approval(approval, job_id=None, status="failed")
        await self._forget(approval.pending_token)  # the decision is recorded: the student asks again
        return Decision(approval, approved=True, problem=outcome.error)

    async def allow_flagged(self, guild_id: int, flagged_id: str, teacher_id: int) -> Allowed:
        """A teacher allowed a flagged file: the start that waited for it goes on, through the same path as Start
        (to a teacher's approval first when approvals are on)."""
        flagged = await self.policy.allow_flagged(guild_id, flagged_id, teacher_id)
        pending = await self.pending(flagged.pending_token)
        if pending is None:
            return Allowed(flagged, Refused(errors.UserFacingError("flagged.error.start_gone")))
        try:
            settings = await self.policy.settings(pending.guild_id)  # once for the whole click
            if await self.policy.needs_approval(pending.guild_id, is_teacher=pending.is_teacher, settings=settings):
                return Allowed(flagged, await self._send_for_approval(pending, settings))
        except errors.UserFacingError as exc:
            return Allowed(flagged, Refused(exc, retry=isinstance(exc, errors.UpstreamBusyError)))
        return Allowed(flagged, await self._start(pending, settings))

    async def _held_for_review(self, pending: PendingStart, flagged: ContentFlaggedError) -> Outcome:
        # Nothing was uploaded; the start waits as long as an approval would, so a teacher can let it go on.
        await self.repo.hold_for_review(pending.token, int(time.time()) + APPROVAL_TTL_SECONDS)
        return Flagged(flagged.flagged, flagged)

    async def _start(self, pending: PendingStart, settings: ClassSettings | None = None) -> Outcome:
        # One click, one job: a double click, or Start racing the teacher's Approve, finds the start claimed.
        if not await self.repo.claim(pending.token):
            return Refused(errors.UserFacingError("error.start_in_progress"), retry=True)
        self._in_flight.add(pending.token)
        try:
            return await self._claimed_start(pending, settings or await self.policy.settings(pending.guild_id))
        finally:
            self._in_flight.discard(pending.token)

    async def _claimed_start(self, pending: PendingStart, settings: ClassSettings) -> Outcome:
        try:
            group = (await self.groups.group_for_start(pending.guild_id, pending.user_id, is_teacher=pending.is_teacher)
                     if self.groups is not None else None)
        except errors.UserFacingError as exc:
            await self._forget(pending.token)  # the group's model is on its way: this card is done
            return Refused(exc)
        if group is None:
            return await self._start_job(pending, None, settings)
        # Two members pressing Start in the same second: the second finds the group's start under way.
        key = (group.guild_id, group.name.casefold())
        if key in self._group_starts:
            await self._forget(pending.token)
            return Refused(errors.GroupJobUnderwayError("group.error.starting", group=group.name))
        self._group_starts.add(key)
        try:
            return await self._start_job(pending, group, settings)
        finally:
            self._group_starts.discard(key)

    def lesson_opened(self, guild_id: int, jobs: int) -> None:
        """A teacher opened a lesson (/lesson start): the server's next job tells the backend that a class of `jobs`
        follows it (start_backend.CLASS_KEY), within LESSON_OPENING_SECONDS."""
        self._lessons_opened[guild_id] = (time.monotonic(), jobs)

    def _class_opening(self, guild_id: int) -> int | None:
        """The jobs a lesson opened in this server is about to start, while its first job is still to come."""
        opened = self._lessons_opened.get(guild_id)
        if opened is None or time.monotonic() - opened[0] > LESSON_OPENING_SECONDS:
            self._lessons_opened.pop(guild_id, None)
            return None
        return opened[1]

    async def _start_job(self, pending: PendingStart, group: Group | None, settings: ClassSettings) -> Outcome:
        reservation: Reservation | None = None
        try:
            await self._refuse_while_preparing(pending.base_model)
            files = await asyncio.to_thread(staging.read_staged, pending)  # read once: moderated, then uploaded
            pending = await self._moderated(pending, settings, files)
            reservation = await self.policy.before_start(pending, settings)  # written before the backend hears of it
            backend = await start_backend.create_job(self.gateway, pending, files, group,
                                                     class_size=self._class_opening(pending.guild_id))
            self._lessons_opened.pop(pending.guild_id, None)  # the class's first job is on its way: told once
        except errors.CreationUnknownError as exc:
            # The job may exist: its reservation stays held and the start claimed, until the housekeeping finds the
            # job by its token (records and charges it) or learns there is none (voids it, and Start works again).
            return Refused(exc, retry=True)
        except BaseException as exc:
            # Nothing exists at the backend: the reservation goes back, and the card may be pressed again if
            # the backend was only busy.
            if reservation is not None:
                await self.policy.on_start_failed(reservation)
            if isinstance(exc, ContentFlaggedError):
                return await self._held_for_review(pending, exc)
            if isinstance(exc, errors.UpstreamBusyError):
                await self.repo.release(pending.token)
                return Refused(exc, retry=True)
            if isinstance(exc, errors.UserFacingError):
                await self._forget(pending.token)
                return Refused(exc)
            await self.repo.release(pending.token)
            raise
        # From here on the job exists and trains: no error may void its reservation. A failure to record it is
        # repaired by reconcile() (the ledger row and the job's metadata share the token).
        try:
            job = await self._record(pending, backend, group)
        except Exception:  # boundary: the job runs whatever happens here; reconcile() records and charges it
            log.exception("Job %s was created but could not be recorded; reconciling later", backend.id)
            return Refused(errors.UserFacingError("error.start_recorded_later", job=backend.id))
        await self._forget(pending.token)
        return Started(job)

    async def _refuse_while_preparing(self, base_model: str) -> None:
        """On the school's trainer, say so kindly while the base model is still downloading or loading."""
        if not self.settings.self_hosted:
            return
        try:
            listed = await self.gateway.list_models()
        except errors.UserFacingError:
            return  # the job creation that follows reports the backend's trouble itself
        model = next((m for m in listed if m.id == base_model), None)
        if model is not None and model.status == "preparing":
            raise errors.TrainerPreparingError(model=base_model, percent=round(100 * (model.progress or 0.0)))

    async def _moderated(self, pending: PendingStart, settings: ClassSettings,
                         files: list[bytes] | None = None) -> PendingStart:
        if pending.cleared:
            return pending
        await self.policy.check_training_data(pending, settings, files)
        await self.repo.mark_cleared(pending.token)
        return replace(pending, cleared=True)

    async def _record(self, pending: PendingStart, backend: BackendJob, group: Group | None = None) -> Job:
        job = await self.jobs.insert(NewJob(
            id=backend.id, guild_id=pending.guild_id, channel_id=pending.channel_id, user_id=pending.user_id,
            base_model=pending.base_model, method=pending.method, suffix=pending.suffix,
            n_epochs=backend.n_epochs or pending.report_epochs, training_file_id=backend.training_file or "",
            validation_file_id=backend.validation_file, training_filename=pending.training_filename,
            examples=pending.examples, estimated_tokens=pending.tokens_billed,
            estimated_cost_usd=pending.estimated_usd, status=backend.status,
            created_at=backend.created_at or int(time.time()),
        ), group_name=group.name if group else None)
        await self.policy.job_recorded(job, pending.token)
        await self._remember_training_prompt(job, pending)
        return job

    async def _remember_training_prompt(self, job: Job, pending: PendingStart) -> None:
        """Store the system prompt most of the file's examples use: chat asks the model the way it was trained."""
        if pending.training_prompt:
            await self.jobs.set_training_system_prompt(job.id, pending.training_prompt)

    async def _owned(self, token: str, user_id: int) -> PendingStart:
        pending = await self.pending(token)
        if pending is None:
            raise errors.UserFacingError("error.start_expired")
        if pending.user_id != user_id:
            raise errors.NotAllowedError("card.not_yours")
        return pending
