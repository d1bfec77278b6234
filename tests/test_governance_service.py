"""GovernanceService and its repository: a real SQLite database and the fake OpenAI over HTTP."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bot import errors
from bot.openai_gateway import FineTuningGateway
from bot.services.dataset_check import DatasetCheckService
from bot.services.governance import (
    MODERATION_BATCH,
    MODERATION_SAMPLE_CAP,
    MODERATION_TEXT_CHARS,
    BudgetExceededError,
    Governance,
    ModerationCoalescer,
    ModerationNotice,
    QuotaExceededError,
    StudentTotals,
    build_report,
    job_cost,
    report_csv,
    training_texts,
)
from storage.database import Database
from storage.governance import GovernanceRepository
from storage.jobs import JobRepository
from storage.models import JobProgress, LedgerEntry, NewJob, SpendSnapshot
from storage.starts import PendingStart
from support.fakes.openai import FakeOpenAI

GUILD, OTHER_GUILD, STUDENT = 1001, 2002, 42
MODEL = "gpt-4o-mini-2024-07-18"


@dataclass
class Parts:
    """The service with its real storage and gateway."""

    db: Database
    repo: GovernanceRepository
    jobs: JobRepository
    service: Governance
    fake: FakeOpenAI


@pytest.fixture
async def parts(fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Parts]:
    """A migrated database file, the repositories, and the service talking to the fake OpenAI.

    The system's temporary folder is this test's own for its length: the files `pending` stages go with it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    db = await Database.open(tmp_path / "gov.sqlite3")
    gateway = FineTuningGateway.create(api_key=fake_openai.api_key, base_url=fake_openai.base_url)
    repo, jobs = GovernanceRepository(db), JobRepository(db)
    try:
        yield Parts(db, repo, jobs, Governance.create(repo, jobs, gateway, self_hosted=False), fake_openai)
    finally:
        await gateway.close()
        await db.close()


def chat_lines(n: int, word: str = "kind") -> bytes:
    """n chat examples."""
    return b"".join(json.dumps({"messages": [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": f"Question {i}?"},
        {"role": "assistant", "content": f"A {word} answer {i}."},
    ]}).encode() + b"\n" for i in range(n))


async def moderation_probed(parts: Parts) -> None:
    """Moderation on, the backend already asked whether it moderates (that probe is not counted by the tests)."""
    await parts.service.roles.update(GUILD, moderation=True)
    assert await parts.service.moderation.moderation_on(GUILD)
    parts.fake.moderation_requests.clear()


def example_batches(parts: Parts) -> list[list[str]]:
    """The moderation requests of a start's examples (not the one of its file's name, "train jsonl")."""
    return [batch for batch in parts.fake.moderation_requests if batch != ["train jsonl"]]


def pending(data: bytes, *, user_id: int = STUDENT, guild_id: int = GUILD, is_teacher: bool = False) -> PendingStart:
    """A checked file waiting for Start."""
    report = DatasetCheckService().check_bytes(data, "train.jsonl", model=MODEL).report
    token = f"tok-{user_id}-{time.monotonic_ns()}"
    staged = Path(tempfile.gettempdir()) / f"classroom-test-{token}.jsonl"
    staged.write_bytes(data)
    now = int(time.time())
    return PendingStart(
        token=token, guild_id=guild_id, channel_id=7, user_id=user_id, is_teacher=is_teacher, base_model=MODEL,
        n_epochs=None, suffix=None, method="supervised", training_filename="train.jsonl", training_name="train.jsonl",
        training_path=str(staged), validation_name=None, validation_path=None, examples=report.examples,
        tokens_billed=report.tokens_billed, report_epochs=report.n_epochs, estimated_usd=report.estimated_cost_usd,
        cleared=False, state="waiting", claimed=False, created_at=now, expires_at=now + 900,
    )


async def insert_job(parts: Parts, job_id: str, *, user_id: int = STUDENT, guild_id: int = GUILD,
                     status: str = "succeeded", trained_tokens: int | None = 1000,
                     model: str | None = "ft:x") -> None:
    """Record a job and move it to a status, as the start flow and the watcher do."""
    await parts.jobs.insert(NewJob(job_id, guild_id, 7, user_id, MODEL, "supervised", None, 3, f"file-{job_id}",
                                   None, "train.jsonl", 10, 500, 0.0015, "running", int(time.time())))
    await parts.jobs.apply(JobProgress(job_id, status, model if status == "succeeded" else None, trained_tokens,
                                       None, None, None, None, None, None))


async def test_reserve_fifty_concurrent_against_budget_for_ten(parts: Parts) -> None:
    """50 concurrent reservations of $1 against a $10 cap: exactly 10 succeed and the ledger holds exactly $10."""
    await parts.repo.update_settings(GUILD, budget_usd=10.0)

    def decide(snapshot: SpendSnapshot) -> None:
        assert snapshot.settings.budget_usd is not None
        if snapshot.committed_usd + 1.0 > snapshot.settings.budget_usd + 1e-9:
            raise BudgetExceededError(left="-", cost="-", cap="-")

    results = await asyncio.gather(*(parts.repo.reserve(GUILD, u, MODEL, 1.0, since=0, decide=decide)
                                     for u in range(50)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 10
    assert all(isinstance(r, BudgetExceededError) for r in results if isinstance(r, BaseException))
    rows = await parts.repo.ledger(GUILD)
    assert len(rows) == 10 and sum(r.reserved_usd for r in rows) == 10.0


async def test_before_start_refuses_student_over_daily_quota_but_not_teacher(parts: Parts) -> None:
    """The second job of the day is refused for a student; a teacher is exempt from per-student quotas."""
    await parts.service.roles.update(GUILD, jobs_per_day=1, moderation=False)
    await parts.service.policy.before_start(pending(chat_lines(12)))
    with pytest.raises(QuotaExceededError):
        await parts.service.policy.before_start(pending(chat_lines(12)))
    await parts.service.policy.before_start(pending(chat_lines(12), is_teacher=True))
    await parts.service.policy.before_start(pending(chat_lines(12), is_teacher=True))
    assert len(await parts.repo.ledger(GUILD)) == 3


async def test_void_reservation_neither_spends_nor_counts(parts: Parts) -> None:
    """A start that failed gives the money back and does not use up the student's daily job."""
    await parts.service.roles.update(GUILD, jobs_per_day=1, budget_usd=1.0, moderation=False)
    reservation = await parts.service.policy.before_start(pending(chat_lines(12)))
    await parts.service.policy.on_start_failed(reservation)
    assert (await parts.service.roles.budget(GUILD))[1] == 0
    await parts.service.policy.before_start(pending(chat_lines(12)))


async def test_budgets_and_ledgers_are_per_server(parts: Parts) -> None:
    """Spending in one server never counts against another's budget."""
    await parts.service.roles.update(GUILD, budget_usd=0.02, moderation=False)
    await parts.service.roles.update(OTHER_GUILD, budget_usd=0.02, moderation=False)
    await parts.service.policy.before_start(pending(chat_lines(12)))
    await parts.service.policy.before_start(pending(chat_lines(12), guild_id=OTHER_GUILD))
    assert len(await parts.repo.ledger(GUILD)) == len(await parts.repo.ledger(OTHER_GUILD)) == 1


async def test_unknown_price_with_a_budget_is_refused(parts: Parts) -> None:
    """Without a price the budget cannot be kept, so a capped server refuses; without a cap it reserves $0."""
    item = pending(chat_lines(12))
    unpriced = replace(item, estimated_usd=None)
    await parts.service.roles.update(GUILD, moderation=False)
    assert (await parts.service.policy.before_start(unpriced)).reserved_usd == 0.0  # type: ignore[union-attr]
    await parts.service.roles.update(GUILD, budget_usd=5.0)
    with pytest.raises(BudgetExceededError) as refused:
        await parts.service.policy.before_start(unpriced)
    assert refused.value.key == "gov.error.no_price"


async def test_settle_ended_catches_jobs_that_ended_while_away(parts: Parts) -> None:
    """A job that ended without the watcher seeing it is settled by the sweep at start-up, once."""
    await parts.service.roles.update(GUILD, moderation=False)
    reservation = await parts.service.policy.before_start(pending(chat_lines(12)))
    await insert_job(parts, "ftjob-a", trained_tokens=2000)
    assert reservation is not None
    await parts.repo.attach_job(reservation.id, "ftjob-a")
    assert await parts.service.policy.settle_ended() == 1
    assert await parts.service.policy.settle_ended() == 0
    [row] = await parts.repo.ledger(GUILD)
    assert row.state == "settled" and row.actual_usd == pytest.approx(2000 * 3.0 / 1e6)


@pytest.mark.parametrize(("status", "tokens", "expected"), [
    ("succeeded", 1_000_000, 3.0), ("cancelled", None, 0.0), ("failed", None, 0.0), ("failed", 500_000, 1.5),
])
async def test_job_cost_is_trained_tokens_times_price(parts: Parts, status: str, tokens: int | None,
                                                      expected: float) -> None:
    """Real cost is trained tokens x the base model's price; an ended job without tokens cost nothing."""
    await insert_job(parts, "ftjob-c", status=status, trained_tokens=tokens)
    job = await parts.jobs.get_any("ftjob-c")
    assert job is not None and job_cost(job) == pytest.approx(expected)


async def test_report_totals_are_the_sum_of_the_jobs(parts: Parts) -> None:
    """Each student's line sums their jobs and the total line sums the students (and the CSV says the same)."""
    await insert_job(parts, "j1", trained_tokens=1000)
    await insert_job(parts, "j2", trained_tokens=3000)
    await insert_job(parts, "j3", user_id=7, status="cancelled", trained_tokens=None)
    await insert_job(parts, "j4", guild_id=OTHER_GUILD, trained_tokens=99999)
    report = await parts.service.reports.report(GUILD)
    by_user = {s.user_id: s for s in report.students}
    assert by_user[STUDENT].jobs == 2 and by_user[STUDENT].trained_tokens == 4000
    assert by_user[STUDENT].actual_usd == pytest.approx(4000 * 3.0 / 1e6)
    assert by_user[7].jobs == 1 and by_user[7].actual_usd == 0
    assert report.total.jobs == 3 and report.total.trained_tokens == 4000
    assert report.total.estimated_usd == pytest.approx(3 * 0.0015)
    rows = report_csv(report, {STUDENT: "민지"}).decode("utf-8-sig").splitlines()
    assert rows[-1].startswith("TOTAL,,3,") and "민지" in rows[1]


def test_build_report_uses_the_ledger_when_settled() -> None:
    """A settled ledger row's real cost wins over recomputing it from the job."""
    entry = LedgerEntry(1, GUILD, STUDENT, "j1", MODEL, 0.5, 0.25, 0.25, "settled", 0, 1)
    report = build_report(GUILD, [], {"j1": entry}, 1.0, 0.25)
    assert report.total.jobs == 0 and report.committed_usd == 0.25


def test_training_texts_reads_chat_preference_and_prompt_files() -> None:
    """Every message's text (system ones too) per example, with line numbers; broken lines are skipped."""
    data = b"\n".join([
        json.dumps({"messages": [{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]}).encode(),
        b"{broken",
        json.dumps({"input": {"messages": [{"role": "user", "content": "q"}]},
                    "preferred_output": [{"role": "assistant", "content": "good"}],
                    "non_preferred_output": [{"role": "assistant", "content": "bad"}]}).encode(),
        json.dumps({"prompt": "p", "completion": "c"}).encode(),
    ])
    assert training_texts(data) == [(1, "SYS\nhi\nhello"), (3, "q\ngood\nbad"), (4, "p\nc")]


@pytest.mark.parametrize(("in_text", "between"), [("\u2028", " "), ("\u0085", " "), (" ", "\r")])
async def test_training_data_split_inside_a_line_is_still_moderated(parts: Parts, in_text: str, between: str) -> None:
    """Attack: U+2028 or U+0085 inside texts, or a bare CR between a line's parts (legal JSON, one line to the
    dataset check) once made moderation see no text at all; it reads the lines the check reads."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    line = ('{"messages": [{"role": "user", "content": "Hi' + in_text + 'there"},' + between +
            '{"role": "assistant", "content": "A nasty' + in_text + 'answer"}]}')
    data = (line + "\n").encode() * 10
    checked = DatasetCheckService().check_bytes(data, "train.jsonl", model=MODEL).report
    assert checked.examples == 10 and not checked.errors
    with pytest.raises(errors.UserFacingError) as refused:
        await parts.service.moderation.check_training_data(pending(data))
    assert refused.value.params["lines"] == "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"


async def test_training_data_system_message_is_moderated(parts: Parts) -> None:
    """Attack: what the model is told to be (the system message) was never moderated."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    data = b"".join(json.dumps({"messages": [
        {"role": "system", "content": "You are nasty."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}]}).encode() + b"\n" for _ in range(2))
    with pytest.raises(errors.UserFacingError) as refused:
        await parts.service.moderation.check_training_data(pending(data))
    assert refused.value.params["lines"] == "1, 2"


async def test_training_data_end_of_a_long_example_is_moderated(parts: Parts) -> None:
    """Attack: only the first 4,000 characters of an example were looked at; a word after them is found now,
    also one that straddles two windows."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    for padding in (10_000, MODERATION_TEXT_CHARS - 3):  # far after the first window; across its end
        data = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": (
            "a" * padding + " nasty")}]}).encode() + b"\n"
        with pytest.raises(errors.UserFacingError):
            await parts.service.moderation.check_training_data(pending(data * 2))
    assert max(len(text) for batch in parts.fake.moderation_requests for text in batch) <= MODERATION_TEXT_CHARS


async def test_class_sized_file_is_moderated_whole_and_a_huge_one_at_random(parts: Parts) -> None:
    """Every example of a file up to the cap is sent; beyond it a random sample, not a fixed one (with 1,024
    examples the fixed sample was every other line, so the odd ones were never checked)."""
    await moderation_probed(parts)
    await parts.service.moderation.check_training_data(pending(chat_lines(MODERATION_SAMPLE_CAP)))
    assert sum(len(b) for b in example_batches(parts)) == MODERATION_SAMPLE_CAP
    samples = []
    for _ in range(2):
        parts.fake.moderation_requests.clear()
        await parts.service.moderation.check_training_data(pending(chat_lines(2 * MODERATION_SAMPLE_CAP)))
        samples.append(frozenset(text for batch in example_batches(parts) for text in batch))
    assert samples[0] != samples[1]  # two draws of 512 out of 1,024 agree with odds of about 1 in 10^306
    assert len(samples[0]) == MODERATION_SAMPLE_CAP


async def test_training_data_moderation_is_batched_and_capped(parts: Parts) -> None:
    """A huge file is moderated as a sample of at most the cap, in batches, before anything is uploaded."""
    await moderation_probed(parts)
    await parts.service.moderation.check_training_data(pending(chat_lines(2000)))
    batches = example_batches(parts)
    assert sum(len(b) for b in batches) == MODERATION_SAMPLE_CAP
    assert all(len(b) <= MODERATION_BATCH for b in batches)
    assert parts.fake.uploads == []


async def test_training_data_flagged_line_is_named(parts: Parts) -> None:
    """A flagged example refuses the start and names its line."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    data = chat_lines(3) + chat_lines(1, word="nasty")
    with pytest.raises(errors.UserFacingError) as refused:
        await parts.service.moderation.check_training_data(pending(data))
    assert refused.value.key == "gov.error.data_flagged" and refused.value.params["lines"] == "4"


@pytest.mark.parametrize(("field", "name"), [("suffix", "my_nasty-model"), ("training_filename", "nasty.jsonl"),
                                           ("validation_name", "so.nasty.jsonl")])
async def test_a_flagged_model_or_file_name_refuses_the_start_and_tells_the_teacher(parts: Parts, field: str,
                                                                                     name: str) -> None:
    """The model's name and the files' names show on the class's cards and lists: a flagged one (read as the words
    it is made of) refuses the start before anything is uploaded, and the teacher channel hears of it."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    notices: list[ModerationNotice] = []

    async def report(notice: ModerationNotice) -> None:
        notices.append(notice)

    parts.service.moderation.add_reporter(report)
    with pytest.raises(errors.UserFacingError) as refused:
        await parts.service.moderation.check_training_data(replace(pending(chat_lines(3)), **{field: name}))
    assert refused.value.key == "gov.error.name_held_back"
    assert [(n.where, n.user_id, n.count) for n in notices] == [("name", STUDENT, 1)]
    assert parts.fake.uploads == []


async def test_ordinary_model_and_file_names_pass(parts: Parts) -> None:
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    named = replace(pending(chat_lines(3)), suffix="pirate-bot", training_filename="library_helper.jsonl",
                    validation_name="held_out.jsonl")
    await parts.service.moderation.check_training_data(named)
    assert ["pirate bot", "library helper jsonl", "held out jsonl"] in parts.fake.moderation_requests


async def test_moderation_defaults_off_when_backend_has_no_endpoint(parts: Parts) -> None:
    """With no explicit choice, moderation is on only where the backend answers moderation requests."""
    parts.fake.fail_next("POST", "/moderations", status=404)
    assert not await parts.service.moderation.moderation_on(GUILD)
    assert await parts.service.moderation.moderate_chat(GUILD, ["anything"]) == [False]
    await parts.service.roles.update(GUILD, moderation=True)  # saved before the backend changed
    assert not await parts.service.moderation.moderation_on(GUILD)
    await parts.service.moderation.check_training_data(pending(chat_lines(3)))  # passes; nothing to ask


async def test_settings_round_trip_and_clear(parts: Parts) -> None:
    """Settings are stored per server; None clears a limit and 'all' clears the model list."""
    settings = await parts.service.roles.update(GUILD, budget_usd=12.5, allowed_models="gpt-4o-mini-2024-07-18, gpt-4.1",
                                          approvals=True, teacher_role_id=5)
    assert settings.allowed_models == ("gpt-4o-mini-2024-07-18", "gpt-4.1") and settings.approvals
    assert (await parts.service.roles.settings(OTHER_GUILD)).budget_usd is None
    settings = await parts.service.roles.update(GUILD, budget_usd=None, allowed_models="all")
    assert settings.budget_usd is None and settings.allowed_models == () and settings.teacher_role_id == 5
    assert await parts.service.roles.is_teacher(GUILD, manages_server=False, role_ids={5})
    assert not await parts.service.roles.is_teacher(OTHER_GUILD, manages_server=False, role_ids={5})


async def test_moderation_coalescer_shares_one_request_between_callers_at_once() -> None:
    """Chat texts checked at the same moment go out in one moderation request, each caller getting its own flags."""
    sent: list[list[str]] = []

    async def send(texts: list[str]) -> list[bool]:
        sent.append(texts)
        await asyncio.sleep(0)
        return [text.startswith("bad") for text in texts]

    coalescer = ModerationCoalescer(send, max_batch=32)
    results = await asyncio.gather(*(coalescer.check([f"{'bad' if i % 3 == 0 else 'ok'}-{i}"]) for i in range(10)))
    assert results == [[i % 3 == 0] for i in range(10)]
    assert len(sent) <= 2 and sum(len(batch) for batch in sent) == 10


async def test_moderation_coalescer_gives_each_caller_the_error() -> None:
    """When the shared request fails, every caller sees the failure (and the next request works)."""
    calls = 0

    async def send(texts: list[str]) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise errors.UpstreamBusyError()
        return [False] * len(texts)

    coalescer = ModerationCoalescer(send, max_batch=2)
    outcomes = await asyncio.gather(coalescer.check(["a"]), coalescer.check(["b"]), coalescer.check(["c"]),
                                    return_exceptions=True)
    assert isinstance(outcomes[0], errors.UpstreamBusyError) and isinstance(outcomes[1], errors.UpstreamBusyError)
    assert outcomes[2] == [False]


@pytest.mark.parametrize("name", ["=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3", "@SUM(A1)", "\tTAB", "\rCR",
                                  "＝HYPERLINK(\"x\")", "＠x", "＋1", "－1"])
def test_report_csv_neutralises_formula_names(name: str) -> None:
    """A nickname that starts like a formula (also in full width) is text in the teacher's spreadsheet."""
    import csv
    import io

    report = build_report(GUILD, [], {}, None, 0.0)
    report = type(report)(GUILD, [StudentTotals(STUDENT, 1)], report.total, None, 0.0)
    rows = list(csv.reader(io.StringIO(report_csv(report, {STUDENT: name}).decode("utf-8-sig"))))
    cell = rows[1][1]
    assert cell == "'" + name and not cell.startswith(("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠"))


async def test_chat_text_is_moderated_whole_in_windows(parts: Parts) -> None:
    """Attack: chat texts were cut at 4,000 characters before moderation; a word after them is found now."""
    await parts.service.roles.update(GUILD, moderation=True)
    parts.fake.flag_words = {"nasty"}
    long_reply = "word " * 1500 + "nasty"
    assert await parts.service.moderation.moderate_chat(GUILD, [long_reply, "kind words"]) == [True, False]
    assert max(len(text) for batch in parts.fake.moderation_requests for text in batch) <= MODERATION_TEXT_CHARS
