"""Embeds, files and buttons of the lesson features: the guided lesson's steps and the held-out evaluation's result."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import discord

from discord.app_commands import Choice

from bot import errors
from bot.discord_edge.access import classroom_bot
from bot.discord_edge.buttons import DurableButton
from bot.discord_edge.replies import private_followup
from bot.discord_edge.text import clip
from bot.i18n import locale_of, minutes_words, t
from bot.services.class_time import ClassTime
from bot.services.evaluation import (
    EvaluationChartLabels,
    EvaluationPlan,
    EvaluationProgress,
    EvaluationReport,
    EvaluationService,
    ShownEvaluation,
    render_score_chart,
)
from bot.services.lessons import GUIDE_STEPS, Behaviour, Lesson, LessonLibrary, guide_examples

log = logging.getLogger(__name__)

SCORES_CHART = "scores.png"
ROWS_SHOWN = 3  # side by side in the embed; every row goes in the attached file
FIELD_CHARS = 1024
ANSWER_CHARS = 300
LESSON_COLOUR = 0x57F287
EVALUATION_COLOUR = 0x5865F2
PROGRESS_EDIT_SECONDS = 3.0  # the "thinking" message says how far the evaluation is, at most this often


def short_name(model: str) -> str:
    """A model's name short enough for a chart legend: a fine-tuned model's suffix, else the name."""
    parts = model.split(":")
    if model.startswith("ft:") and len(parts) >= 4 and parts[3]:
        return parts[3]
    return parts[1] if model.startswith("ft:") and len(parts) > 1 else model


def behaviour_text(behaviour: Behaviour, locale: str) -> str:
    """What the lesson teaches, as the end of a sentence ("end with “Arr, matey!”")."""
    return t(f"evaluate.behaviour.{behaviour.kind}", locale, text=behaviour.text or "", count=behaviour.count or 3)


def lesson_choices(lessons: LessonLibrary, locale: str, current: str) -> list[Choice[str]]:
    """The sample lessons whose name or title contains what was typed, titled in the user's language."""
    current, language = current.strip().lower(), locale_of(locale)
    found = [lesson for lesson in lessons.all() if current in lesson.name or current in lesson.title(language).lower()]
    return [Choice(name=f"{lesson.title(language)} ({lesson.name})"[:100], value=lesson.name) for lesson in found][:25]


# The guided lesson ------------------------------------------------------------------------------------------


def class_time_text(estimate: ClassTime, locale: str) -> str:
    """The whole class's training time on this machine, for the teacher: "about 40 minutes for 30 students"."""
    count = estimate.students
    students = t("class_time.student_one" if count == 1 else "class_time.students", locale, n=count)
    lines = [t("class_time.line", locale, time=_minutes(estimate.seconds, locale), students=students,
               lesson=estimate.lesson.title(locale_of(locale)), model=estimate.model)]
    if estimate.group_seconds is not None:
        key = "class_time.groups_on" if estimate.groups_on else "class_time.groups"
        lines.append(t(key, locale, size=estimate.group_size, time=_minutes(estimate.group_seconds, locale)))
    if not estimate.measured:
        lines.append(t("class_time.trial" if estimate.trial else "class_time.guess", locale))
    return " ".join(lines)


def _minutes(seconds: int, locale: str) -> str:
    return minutes_words(max(1, round(seconds / 60)), locale)



def lesson_step_embed(lesson: Lesson, step: int, locale: str, held: frozenset[int] = frozenset()) -> discord.Embed:
    """One step of the guided lesson (0-based), in the class's language; `held`: examples moderation held back."""
    name = GUIDE_STEPS[step]
    examples = "\n\n".join("> " + t("post.held_back", locale) if i in held
                             else _example_block(e.as_messages(), e.reference)
                             for i, e in enumerate(guide_examples(lesson)))
    body = t(f"lesson.step.{name}", locale, title=lesson.title(locale), lesson=lesson.name,
             examples=examples if name == "example" else len(lesson.training_examples))
    embed = discord.Embed(title=t("lesson.step_title", locale, title=lesson.title(locale), step=step + 1,
                                  total=len(GUIDE_STEPS)), description=clip(body, 4096), colour=LESSON_COLOUR)
    if step == len(GUIDE_STEPS) - 1:
        embed.set_footer(text=t("lesson.finished", locale))
    return embed


def _example_block(messages: list[dict[str, str]], answer: str) -> str:
    lines = [f"**{m['role']}**: {clip(m['content'], 200)}" for m in messages]
    lines.append(f"**assistant**: {clip(answer, 300)}")
    return "> " + "\n> ".join(line.replace("\n", "\n> ") for line in lines)


class LessonNextButton(DurableButton, template=r"lesson-next:(?P<lesson>[\w\-]+):(?P<step>\d+):(?P<owner_id>\d+)"):
    """The teacher's "Next" under a lesson step; everything it needs is in its id, so it works after a restart."""

    def __init__(self, lesson: str, step: int | str, owner_id: int | str, label: str = "Next") -> None:
        super().__init__(f"lesson-next:{lesson}:{step}:{owner_id}", label, discord.ButtonStyle.green, emoji="▶️")
        self.lesson, self.step, self.owner_id = lesson, int(step), int(owner_id)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Only the teacher who started the lesson moves it on (students would skip ahead of the class)."""
        if interaction.user.id == self.owner_id:
            return True
        await interaction.response.send_message(t("lesson.error.not_yours", interaction.locale), ephemeral=True)
        return False

    async def clicked(self, interaction: discord.Interaction) -> None:
        """Grey out this step's button and post the next step (its examples moderated first)."""
        bot = classroom_bot(interaction)
        locale = bot.channel_locale(interaction.guild_id)
        lesson = bot.lessons.get(self.lesson)
        following = self.step + 1
        held: frozenset[int] = frozenset()
        if following < len(GUIDE_STEPS) and GUIDE_STEPS[following] == "example" and interaction.guild_id is not None:
            await interaction.response.defer()  # the check may take longer than Discord's 3 seconds
            try:
                held = await bot.evaluation.held_examples(interaction.guild_id, guide_examples(lesson))
            except errors.ModerationUnavailableError as exc:  # fail closed: Next stays, to press again shortly
                await interaction.followup.send(exc.render(interaction.locale), ephemeral=True)
                return
        # Rebuilt from its id, the button has lost its label: it keeps the lesson's language, not the default's.
        self.item.label = t("lesson.next", locale)
        self.item.disabled = True
        done = discord.ui.View(timeout=None)
        done.add_item(self.item)
        if interaction.response.is_done():
            await interaction.edit_original_response(view=done)
        else:
            await interaction.response.edit_message(view=done)
        if following >= len(GUIDE_STEPS):
            return
        view = lesson_step_view(lesson, following, self.owner_id, locale)
        await interaction.followup.send(embed=lesson_step_embed(lesson, following, locale, held),
                                        view=view or discord.utils.MISSING)


def lesson_step_view(lesson: Lesson, step: int, owner_id: int, locale: str) -> discord.ui.View | None:
    """The Next button under a step (none under the last one)."""
    if step >= len(GUIDE_STEPS) - 1:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(LessonNextButton(lesson.name, step, owner_id, label=t("lesson.next", locale)))
    return view


# The evaluation ---------------------------------------------------------------------------------------------


def evaluation_embed(report: EvaluationReport, shown: ShownEvaluation, locale: str) -> discord.Embed:
    """Scores per model, a verdict, the metric explained in one line, and the first questions side by side."""
    first, second = report.scores
    title = t("evaluate.title", locale, count=len(report.rows), source=_source(shown, locale))
    embed = discord.Embed(title=clip(title, 256), colour=EVALUATION_COLOUR)
    if report.behaviour is not None:
        explain = t("evaluate.explain", locale, behaviour=behaviour_text(report.behaviour, locale))
    else:
        explain = t("evaluate.explain_similarity_only", locale)
    lines = [explain, "", _verdict(report, locale)]
    if report.instruction is not None:
        lines += ["", t("evaluate.explain_instructed", locale, instruction=report.instruction)]
    if _any_held(shown):
        lines += ["", t("post.held_back_rows", locale)]
    if report.held_questions:
        lines += ["", t("evaluate.questions_held", locale, count=report.held_questions)]
    embed.description = clip("\n".join(lines), 4096)
    for index, (score, role) in enumerate(((first, "evaluate.fine_tuned"), (second, _other_role(report)))):
        value = []
        if score.behaviour_rate is not None:
            checked = [row.shows[index] for row in report.rows if row.shows[index] is not None]
            value.append(t("evaluate.score_behaviour", locale, shown=sum(bool(c) for c in checked),
                           total=len(checked), percent=_percent(score.behaviour_rate)))
        value.append(t("evaluate.score_similarity", locale, percent=_percent(score.similarity)))
        embed.add_field(name=clip(f"{t(role, locale)}: {score.model}", 256), value="\n".join(value), inline=True)
    for row in shown.rows[:ROWS_SHOWN]:
        answers = "\n".join([
            t("evaluate.expected", locale, answer=clip(_posted(row.reference, locale), ANSWER_CHARS)),
            f"**{short_name(report.models[0])}**: {_answer(row.answers[0], locale)}",
            f"**{_other_name(report, locale)}**: {_answer(row.answers[1], locale)}",
        ])
        embed.add_field(name=clip(t("evaluate.question", locale, prompt=_posted(row.prompt, locale)), 256),
                        value=clip(answers, FIELD_CHARS), inline=False)
    embed.set_image(url=f"attachment://{SCORES_CHART}")
    embed.set_footer(text=t("evaluate.all_answers", locale))
    return embed


def _other_role(report: EvaluationReport) -> str:
    return "evaluate.other" if report.instruction is None else "evaluate.other_instructed"


def _other_name(report: EvaluationReport, locale: str) -> str:
    """The compared model's short name, and "given the instruction" when it was."""
    name = short_name(report.models[1])
    return name if report.instruction is None else f"{name} ({t('evaluate.other_instructed', locale)})"


def _posted(text: str | None, locale: str) -> str:
    # A student's question or answer that moderation held back: a kind note in its place.
    return t("post.held_back", locale) if text is None else text


def _source(shown: ShownEvaluation, locale: str) -> str:
    return _posted(shown.source, locale)


def _any_held(shown: ShownEvaluation) -> bool:
    return shown.source is None or any(None in (r.prompt, r.reference, *r.answers) for r in shown.rows)


def _answer(text: str | None, locale: str) -> str:
    if text is None:
        return t("evaluate.held_back", locale)
    return clip(" ".join(text.split()), ANSWER_CHARS) or t("evaluate.empty", locale)


def _percent(value: float) -> int:
    return round(100 * value)


def _verdict(report: EvaluationReport, locale: str) -> str:
    first, second = report.scores
    if first.behaviour_rate is not None and second.behaviour_rate is not None:
        if report.instruction is not None:  # the other model was told: matching it is what training is for
            as_good = 0 < first.behaviour_rate >= second.behaviour_rate
            key = "evaluate.verdict_instructed_as_good" if as_good else "evaluate.verdict_instructed_better"
        elif first.behaviour_rate > second.behaviour_rate:
            key = "evaluate.verdict_better"
        else:
            key = "evaluate.verdict_not_better"
        return t(key, locale, first=_percent(first.behaviour_rate), second=_percent(second.behaviour_rate))
    return t("evaluate.verdict_similarity", locale, first=_percent(first.similarity),
             second=_percent(second.similarity))


def answers_file(report: EvaluationReport, shown: ShownEvaluation, locale: str) -> discord.File:
    """Every question with the file's answer and both models' answers, as Markdown (held-back texts as a note)."""
    parts = [f"# {t('evaluate.title', locale, count=len(report.rows), source=_source(shown, locale))}\n"]
    for row, posted in zip(report.rows, shown.rows, strict=True):
        parts.append(f"## {_posted(posted.prompt, locale)}\n\n"
                     f"{t('evaluate.expected', locale, answer=_posted(posted.reference, locale))}\n")
        for model, text, sim in ((report.models[0], posted.answers[0], row.similarities[0]),
                                 (report.models[1], posted.answers[1], row.similarities[1])):
            shown_text = text if text is not None else t("evaluate.held_back", locale)
            parts.append(f"### {model} ({_percent(sim)}%)\n\n{shown_text}\n")
    return discord.File(io.BytesIO("\n".join(parts).encode()), filename="evaluation.md")


async def post_evaluation(interaction: discord.Interaction, service: EvaluationService, plan: EvaluationPlan) -> None:
    """Run the plan and post the result in the channel: the embed, the score chart and every answer in a file."""
    locale = str(interaction.locale)
    line = ProgressLine(interaction, locale, service.wait_in_line_seconds)
    try:
        report = await service.run(plan, line)
        # Everything posted for the class that a student or a model wrote passes the class's moderation first
        # (checked together, in one request where the backend allows); a check that errors posts nothing.
        shown = await service.shown(plan.guild_id, report)
        labels = EvaluationChartLabels(title=t("evaluate.chart_title", locale),
                                       behaviour=t("evaluate.chart_behaviour", locale),
                                       similarity=t("evaluate.chart_similarity", locale))
        names = (f"{short_name(report.models[0])} ({t('evaluate.fine_tuned', locale)})",
                 _other_name(report, locale))
        png = await asyncio.to_thread(render_score_chart, report, labels=labels, names=names)  # ~0.1 s of CPU
        await interaction.followup.send(
            embed=evaluation_embed(report, shown, locale),
            files=[discord.File(io.BytesIO(png), filename=SCORES_CHART), answers_file(report, shown, locale)],
            allowed_mentions=discord.AllowedMentions.none(),
        )
    except BaseException:
        # The public placeholder goes, so the error that follows is the student's alone (a first followup after a
        # public deferral would take the placeholder's place, in public).
        await line.clear(always=True)
        raise
    await line.clear()


class ProgressLine:
    """An evaluation's progress in its deferred answer: answers so far, and plainly when it waits in line for a busy
    model. Edited at once when it starts or stops waiting, otherwise at most every PROGRESS_EDIT_SECONDS."""

    def __init__(self, interaction: discord.Interaction, locale: str, wait_seconds: float) -> None:
        self.interaction, self.locale, self.minutes = interaction, locale, max(1, round(wait_seconds / 60))
        self.waiting: bool | None = None
        self.at = 0.0
        self.shown = False

    async def __call__(self, progress: EvaluationProgress) -> None:
        """Show the progress, unless it was shown a moment ago and is of the same kind."""
        if progress.waiting == self.waiting and time.monotonic() - self.at < PROGRESS_EDIT_SECONDS:
            return
        self.waiting, self.at = progress.waiting, time.monotonic()
        key = "evaluate.progress.waiting" if progress.waiting else "evaluate.progress.asking"
        try:
            await self.interaction.edit_original_response(content=t(
                key, self.locale, answered=progress.answered, total=progress.total, minutes=self.minutes))
            self.shown = True
        except discord.HTTPException:  # the progress line is a courtesy: the evaluation goes on without it
            log.info("Could not show an evaluation's progress (user %s)", self.interaction.user.id)

    async def clear(self, always: bool = False) -> None:
        """Take the progress line (or with `always`, the deferral's placeholder) away once the evaluation has
        ended: its result, or its error, says the rest."""
        if self.shown or always:
            try:
                await self.interaction.delete_original_response()
            except discord.HTTPException:
                log.info("Could not remove an evaluation's progress line (user %s)", self.interaction.user.id)


class EvaluateJobButton(DurableButton, template=r"evaluate-job:(?P<job_id>[\w\-]+)"):
    """"Test on unseen questions" under a success notice; it keeps working after a restart."""

    cooldown = (1, 60.0)  # one evaluation (up to 40 model requests) per member a minute, as /evaluate allows two

    def __init__(self, job_id: str, label: str = "Test on unseen questions") -> None:
        super().__init__(f"evaluate-job:{job_id}", label, discord.ButtonStyle.grey, emoji="📝")
        self.job_id = job_id

    async def clicked(self, interaction: discord.Interaction) -> None:
        """Evaluate the job's model on its lesson's held-out questions (or say how to, for a file of one's own)."""
        bot = classroom_bot(interaction)
        assert interaction.guild_id is not None
        model, _ = await bot.chat.model_for_job(interaction.guild_id, self.job_id)
        if bot.evaluation.lesson_of_model(model) is None:
            await interaction.response.send_message(t("evaluate.job_without_lesson", interaction.locale, model=model),
                                                    ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        try:
            plan = await bot.evaluation.plan(interaction.guild_id, model, user_id=interaction.user.id)
            await post_evaluation(interaction, bot.evaluation, plan)
        except errors.UserFacingError as exc:  # e.g. the safety check is not answering: nothing unchecked is posted
            await private_followup(interaction, exc.render(interaction.locale))
