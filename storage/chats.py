"""Chat threads, their turns, and the models a server has trained (read from its jobs and checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import aiosqlite

from storage.database import Database
from storage.models import ChatThread, ChatTurn, TrainedModel

_THREAD_COLUMNS = ", ".join(f.name for f in fields(ChatThread))
_TURN_COLUMNS = "id, thread_id, role, user_id, content, tokens, created_at"
# A server's models: each job's fine-tuned model and each checkpoint's, with the losses over its epoch.
# The final model's validation loss prefers the whole validation set's, when the backend reports one.
# A model's epoch: the steps after the previous checkpoint up to its own step (a final model's step is the job's
# last one).
# Without announced checkpoints, an epoch is the job's steps divided by its epochs.
_EPOCH_START = ("coalesce((SELECT max(p.step) FROM job_checkpoints p WHERE p.job_id = {job} AND p.step < {step}), "
                "{step} - j.total_steps / j.n_epochs, 0)")
_LAST_STEP = "(SELECT max(x.step) FROM job_metrics x WHERE x.job_id = j.id)"
_TRAINED_SQL = f"""
SELECT * FROM (
    SELECT j.fine_tuned_model AS model_id, j.id AS job_id, 0 AS is_checkpoint, NULL AS step, j.base_model,
           j.user_id, j.training_filename, j.suffix, coalesce(j.finished_at, j.updated_at) AS created_at,
           (SELECT avg(m.train_loss) FROM job_metrics m WHERE m.job_id = j.id AND m.train_loss IS NOT NULL
            AND m.step > {_EPOCH_START.format(job="j.id", step=_LAST_STEP)}) AS epoch_train_loss,
           coalesce((SELECT m.full_valid_loss FROM job_metrics m WHERE m.job_id = j.id
                     AND m.full_valid_loss IS NOT NULL ORDER BY m.step DESC LIMIT 1),
                    (SELECT avg(m.valid_loss) FROM job_metrics m WHERE m.job_id = j.id AND m.valid_loss IS NOT NULL
                     AND m.step > {_EPOCH_START.format(job="j.id", step=_LAST_STEP)})) AS valid_loss,
           j.training_system_prompt AS system_prompt
    FROM jobs j WHERE j.guild_id = ? AND j.fine_tuned_model IS NOT NULL
          AND j.fine_tuned_model NOT IN (SELECT resource_id FROM backend_deletions)
    UNION ALL
    SELECT c.model_id, j.id, 1, c.step, j.base_model, j.user_id, j.training_filename, j.suffix, c.created_at,
           (SELECT avg(m.train_loss) FROM job_metrics m WHERE m.job_id = j.id AND m.train_loss IS NOT NULL
            AND m.step <= c.step AND m.step > {_EPOCH_START.format(job="j.id", step="c.step")}),
           (SELECT avg(m.valid_loss) FROM job_metrics m WHERE m.job_id = j.id AND m.valid_loss IS NOT NULL
            AND m.step <= c.step AND m.step > {_EPOCH_START.format(job="j.id", step="c.step")}),
           j.training_system_prompt
    FROM job_checkpoints c JOIN jobs j ON j.id = c.job_id WHERE j.guild_id = ? AND c.model_id IS NOT NULL
          AND c.model_id NOT IN (SELECT resource_id FROM backend_deletions)
)
"""


@dataclass(frozen=True)
class DeletedChats:
    """What deleting a student's chat data removed: the threads they opened and their own messages elsewhere."""

    thread_ids: tuple[int, ...]
    messages: int


def _thread(row: aiosqlite.Row) -> ChatThread:
    return ChatThread(**dict(row))


def _turn(row: aiosqlite.Row) -> ChatTurn:
    return ChatTurn(**dict(row))


def _trained(row: aiosqlite.Row) -> TrainedModel:
    data = dict(row)
    data["is_checkpoint"] = bool(data["is_checkpoint"])
    return TrainedModel(**data)


class ChatRepository:
    """All SQL about chat threads and turns."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # Threads -----------------------------------------------------------------------------------------------

    async def create_thread(self, thread: ChatThread) -> ChatThread:
        """Remember a new chat thread."""
        values = [getattr(thread, f.name) for f in fields(ChatThread)]
        marks = ", ".join("?" for _ in values)
        await self.db.execute(f"INSERT INTO chat_threads ({_THREAD_COLUMNS}) VALUES ({marks})", values)
        return thread

    async def get_thread(self, thread_id: int) -> ChatThread | None:
        """A chat thread by its Discord id, or None if it is not one of ours."""
        row = await self.db.fetch_one(f"SELECT {_THREAD_COLUMNS} FROM chat_threads WHERE thread_id = ?", (thread_id,))
        return _thread(row) if row else None

    async def end_thread(self, thread_id: int, at: int) -> bool:
        """Mark a thread ended; False if it already was."""
        changed = await self.db.execute(
            "UPDATE chat_threads SET ended_at = ? WHERE thread_id = ? AND ended_at IS NULL", (at, thread_id)
        )
        return changed > 0

    # Turns -------------------------------------------------------------------------------------------------

    async def recent_turns(self, thread_id: int, limit: int) -> list[ChatTurn]:
        """The newest `limit` turns of a thread, oldest first."""
        rows = await self.db.fetch_all(
            f"SELECT {_TURN_COLUMNS} FROM chat_turns WHERE thread_id = ? ORDER BY id DESC LIMIT ?", (thread_id, limit)
        )
        return [_turn(r) for r in reversed(rows)]

    async def add_exchange(
        self, thread_id: int, user_id: int, question: str, question_tokens: int, answer: str, answer_tokens: int,
        at: int,
    ) -> tuple[ChatTurn, ChatTurn]:
        """Store a question and its answer together, so history never holds half an exchange."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO chat_turns (thread_id, role, user_id, reply_to, content, tokens, created_at) "
                "VALUES (?, 'user', ?, NULL, ?, ?, ?)",
                (thread_id, user_id, question, question_tokens, at),
            )
            question_id = cur.lastrowid
            cur = await conn.execute(
                "INSERT INTO chat_turns (thread_id, role, user_id, reply_to, content, tokens, created_at) "
                "VALUES (?, 'assistant', NULL, ?, ?, ?, ?)",
                (thread_id, question_id, answer, answer_tokens, at),
            )
            answer_id = cur.lastrowid
        assert question_id is not None and answer_id is not None
        return (
            ChatTurn(question_id, thread_id, "user", user_id, question, question_tokens, at),
            ChatTurn(answer_id, thread_id, "assistant", None, answer, answer_tokens, at),
        )

    # A student's data --------------------------------------------------------------------------------------

    async def delete_user_data(self, guild_id: int, user_id: int) -> DeletedChats:
        """Delete the threads a student opened on a server and their messages (with the answers) in others."""
        async with self.db.transaction() as conn:
            async with conn.execute(
                "SELECT thread_id FROM chat_threads WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
            ) as cur:
                thread_ids = tuple(int(r[0]) for r in await cur.fetchall())
            # reply_to cascades: an answer goes with the question it answered.
            async with conn.execute(
                "DELETE FROM chat_turns WHERE user_id = ? AND thread_id IN "
                "(SELECT thread_id FROM chat_threads WHERE guild_id = ?)",
                (user_id, guild_id),
            ) as cur:
                messages = cur.rowcount
            await conn.execute("DELETE FROM chat_threads WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
        return DeletedChats(thread_ids, messages)

    # Models a server trained -------------------------------------------------------------------------------

    async def trained_models(self, guild_id: int, *, search: str = "", limit: int = 25) -> list[TrainedModel]:
        """This server's fine-tuned models and checkpoints, newest first, optionally filtered."""
        pattern = f"%{search.lower()}%"
        rows = await self.db.fetch_all(
            _TRAINED_SQL + "WHERE lower(model_id) LIKE ? OR lower(coalesce(suffix, '')) LIKE ? "
            "OR lower(training_filename) LIKE ? ORDER BY created_at DESC, is_checkpoint, step DESC LIMIT ?",
            (guild_id, guild_id, pattern, pattern, pattern, limit),
        )
        return _unique([_trained(r) for r in rows])

    async def trained_model(self, guild_id: int, model_id: str) -> TrainedModel | None:
        """One model this server trained, or None (another server's model is as good as unknown)."""
        rows = await self.db.fetch_all(
            _TRAINED_SQL + "WHERE model_id = ? ORDER BY is_checkpoint LIMIT 1", (guild_id, guild_id, model_id)
        )
        return _trained(rows[0]) if rows else None


def _unique(models: list[TrainedModel]) -> list[TrainedModel]:
    # A backend may name the final checkpoint like the model itself: show each name once.
    seen: set[str] = set()
    out = []
    for model in models:
        if model.model_id not in seen:
            seen.add(model.model_id)
            out.append(model)
    return out
