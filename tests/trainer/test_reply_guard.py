"""The reply guard: a reply that loops or drifts into another script's junk ends cleanly where that starts, and an
ordinary reply passes untouched, piece by piece as it streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trainer.reply_guard import ReplyGuard, guarded, scripts_in, scripts_of_file

SIGN_OFF = "📚 도서관 도우미 드림"
# What the Korean lesson's model wrote in one bench run (issue 26), cut into the pieces a stream delivers.
LOOPING = ("학생은 한 번에 다섯 권까지 빌릴 수 있어요. " + SIGN_OFF + "eleSp\n") * 3 + (
    "📚도움 partnereleSp\n…빌면요금 받아요! 거예요 . 주세요드론stepToken模型lexemeTable")


def run(guard: ReplyGuard, text: str, size: int = 3) -> tuple[str, bool]:
    """Feed text in pieces of `size` characters; return what was shown and whether the guard stopped it."""
    shown = ""
    for start in range(0, len(text), size):
        piece, stop = guard.feed(text[start:start + size])
        shown += piece
        if stop:
            return shown, True
    return shown + guard.flush(), False


def korean_guard() -> ReplyGuard:
    """A guard for a Korean chat with a model trained on a Korean-only file."""
    return ReplyGuard(scripts_in(["책은 몇 권까지 빌릴 수 있어요?", "학생은 한 번에 다섯 권까지 빌릴 수 있어요."]))


def test_guard_korean_reply_drifting_into_latin_junk_ends_before_the_junk() -> None:
    """The bench's looping Korean reply ends right after its first sign-off: the answer, never "eleSp"."""
    guard = korean_guard()
    shown, stopped = run(guard, LOOPING)
    assert stopped and guard.reason == "script"
    assert shown == "학생은 한 번에 다섯 권까지 빌릴 수 있어요. " + SIGN_OFF


def test_guard_sentence_said_again_ends_before_the_repeat() -> None:
    """A reply that starts its first sentence over ends after the first time, repeat held back, never shown."""
    guard = korean_guard()
    sentence = "학생은 한 번에 다섯 권까지 빌릴 수 있어요. "
    shown, stopped = run(guard, sentence + "방학에는 열 권이에요. " + sentence * 5)
    assert stopped and guard.reason == "repetition"
    assert shown.rstrip() == sentence + "방학에는 열 권이에요."


@pytest.mark.parametrize("text", [
    "도서관 도서관 도서관 도서관 도서관 도서관 도서관 도서관 도서관",
    "ㅋ" * 60,
])
def test_guard_short_piece_repeated_over_and_over_is_cut(text: str) -> None:
    """A word or a letter repeated without end is cut to a short run."""
    guard = korean_guard()
    shown, stopped = run(guard, text)
    assert stopped and guard.reason == "repetition" and len(shown) <= 20


@pytest.mark.parametrize("text", [
    "학생은 한 번에 다섯 권까지 빌릴 수 있어요. 📚 도서관 도우미 드림",
    "네! 😊 3층 열람실은 9시부터 18시까지 열어요. 시험 기간에는 21시까지예요. 📚 도서관 도우미 드림",
    "ㅋㅋㅋ 좋은 질문이에요!! 1) 학생증 2) 신청서... 끝!",
    "Yes. Yes. Arr, matey!",
])
def test_guard_ordinary_reply_passes_whole(text: str) -> None:
    """Replies with emoji, digits, laughter and short emphasis pass exactly as written."""
    guard = ReplyGuard(scripts_in(["책은 몇 권까지 빌릴 수 있어요?", "Can I borrow books?"]))
    assert run(guard, text) == (text, False)
    assert guard.reason is None


def test_guard_english_model_answering_a_korean_question_keeps_its_english() -> None:
    """A model that answers in its own language from its first words is not drifting: the reply passes."""
    guard = korean_guard()
    text = "I can only speak English, sorry! Books: five at a time."
    assert run(guard, text) == (text, False)


def test_guard_english_question_in_an_english_chat_allows_the_korean_the_student_wrote() -> None:
    """Scripts of the chat are allowed: a Korean word the student used may come back in the answer."""
    guard = ReplyGuard(scripts_in(["What does 안녕 mean?"]))
    text = "It means hello. You say 안녕 to a friend."
    assert run(guard, text, size=1) == (text, False)


def test_scripts_of_a_training_file_read_through_json_escapes(tmp_path: Path) -> None:
    """A file written with json.dumps' \\u escapes still counts as Korean."""
    path = tmp_path / "train.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "\\uc548\\ub155"}]}\n')
    assert "HANGUL" in scripts_of_file(path)


def test_scripts_of_a_training_file_are_what_its_people_wrote_not_its_json_keys() -> None:
    """The Korean lesson's file is Korean: its keys ("messages", "role", "content") and roles ("user") are no Latin
    its writers used. Counted as such they let every Latin junk through a Korean model's replies: a class of 10 through
    the bot read "네, 도서관 도우미 드림FBSDKInternal" and the reply running on after its sign-off."""
    lesson = Path(__file__).resolve().parents[2] / "lessons" / "library-helper-ko" / "train.jsonl"
    allowed = scripts_of_file(lesson)
    assert allowed == {"HANGUL"}
    guard = ReplyGuard(allowed | scripts_in(["도서관에서 책은 몇 권까지 빌릴 수 있어요?"]))
    shown, stopped = run(guard, "네, 도서관 도우미 드림FBSDKInternal\n한 권은 1만 원이에요. " + SIGN_OFF)
    assert stopped and guard.reason == "script" and shown == "네, 도서관 도우미 드림"


@pytest.mark.parametrize(("line", "scripts"), [
    ('{"messages": [{"role": "user", "content": [{"type": "text", "text": "안녕"}]}]}', {"HANGUL"}),  # content parts
    ('{"prompt": "Hello", "completion": " 안녕"}', {"LATIN", "HANGUL"}),  # the legacy prompt and completion
    ('{"input": {"messages": [{"role": "user", "content": "안녕"}]}, "preferred_output": [{"role": "assistant", '
     '"content": "Hi"}], "non_preferred_output": [{"role": "assistant", "content": "ヤア"}]}',
     {"HANGUL", "LATIN", "KANA"}),  # preference pairs
])
def test_scripts_of_every_kind_of_training_line(tmp_path: Path, line: str, scripts: set[str]) -> None:
    """Chat lines with content parts, the legacy prompt-completion lines and preference pairs: their written texts."""
    path = tmp_path / "train.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    assert scripts_of_file(path) == scripts


async def test_guarded_stream_closes_the_generation_when_it_stops() -> None:
    """Stopping a reply closes the generator beneath it, which frees its place in the batch."""
    closed = []

    async def pieces() -> AsyncIterator[str]:
        try:
            for start in range(0, len(LOOPING), 4):
                yield LOOPING[start:start + 4]
        finally:
            closed.append(True)

    shown = "".join([piece async for piece in guarded(pieces(), korean_guard())])
    assert shown.endswith(SIGN_OFF) and closed == [True]


class _Scripted:
    """A generator stand-in that streams a fixed reply, piece by piece, and notes when it was closed."""

    def __init__(self, reply: str) -> None:
        self.reply, self.closed = reply, 0

    def stream(self, target: object, messages: object, **options: object) -> AsyncIterator[str]:
        async def pieces() -> AsyncIterator[str]:
            try:
                for start in range(0, len(self.reply), 5):
                    yield self.reply[start:start + 5]
            finally:
                self.closed += 1
        return pieces()


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_reply_running_on_is_cut_through_the_api(tmp_path: Path, stream: bool) -> None:
    """Through the trainer's own route and the openai SDK, a looping reply arrives cut after its sign-off, ends with
    finish_reason "stop", says which guard ended it, and its generation is closed."""
    from aiohttp.test_utils import TestServer
    from openai import AsyncOpenAI

    from trainer.routes import build_app
    from trainer.config import Settings
    from trainer.scheduler import Scheduler
    from trainer.store import Store

    settings = Settings(data_dir=tmp_path, api_key="k" * 32, base_models={"tiny": "unused"}, device="cpu")
    store = Store(tmp_path / "trainer.db")
    generator = _Scripted(LOOPING)
    server = TestServer(build_app(settings, store, Scheduler(settings, store, ["cpu"]), generator), host="127.0.0.1")
    await server.start_server()
    api = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k" * 32, max_retries=0)
    try:
        messages = [{"role": "user", "content": "책은 몇 권까지 빌릴 수 있어요?"}]
        if stream:
            text, finish, extra = "", None, {}
            async for chunk in await api.chat.completions.create(model="tiny", messages=messages, stream=True):
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                    extra = chunk.choices[0].model_extra or extra
        else:
            reply = await api.chat.completions.create(model="tiny", messages=messages)
            text, finish = reply.choices[0].message.content or "", reply.choices[0].finish_reason
            extra = reply.choices[0].model_extra or {}
    finally:
        await api.close()
        await server.close()
    assert text == "학생은 한 번에 다섯 권까지 빌릴 수 있어요. " + SIGN_OFF
    assert finish == "stop" and extra.get("guard") == "script" and generator.closed == 1
