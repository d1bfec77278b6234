"""POST /v1/moderations on the trainer: OpenAI's shape through the real SDK and raw HTTP, and the filters' quality."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from support.trainer_harness import TrainerProcess
from tests.trainer.test_journey import client
from trainer import moderation

KEY = "moderation-test-key"
LABELLED = Path(__file__).with_name("data") / "moderation_set.jsonl"
# Goals of issue 16 on the labelled set (docs/benchmarks.md has the measured figures and bench/ reruns them).
MIN_PRECISION, MIN_RECALL = 0.90, 0.80


def labelled(lang: str) -> list[tuple[str, bool]]:
    """(text, should be flagged) of the classroom messages written for these tests, in one language."""
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["text"], row["flagged"]) for row in rows if row["lang"] == lang]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[TrainerProcess]:
    """A keyed trainer shared by this module's endpoint tests."""
    process = TrainerProcess(tmp_path_factory.mktemp("moderation") / "data", tiny_model, TRAINER_API_KEY=KEY).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def filters() -> moderation.Filters:
    """The filters as the trainer loads them, once for the module."""
    return moderation.Filters()


async def test_sdk_moderations_create_flags_korean_jamo_swear_as_harassment_only(server: TrainerProcess) -> None:
    """The SDK's moderations.create parses the answer; ㅅㅂ is flagged as harassment and nothing else."""
    answer = await client(server, KEY).moderations.create(input="ㅅㅂ 숙제 왜 이렇게 많아")
    assert answer.model == moderation.MODEL_NAME and answer.id.startswith("modr-")
    (result,) = answer.results
    assert result.flagged and result.categories.harassment and result.category_scores.harassment == 1.0
    others = result.categories.model_dump(by_alias=True)
    assert [name for name, value in others.items() if value] == ["harassment"]


async def test_sdk_list_input_gets_one_result_per_text_in_order(server: TrainerProcess) -> None:
    """A list of Korean and English texts gets results in the same order, clean ones unflagged."""
    texts = ["모델 학습이 끝났어!", "fuck this homework", "The loss is falling", "씨 발 뭐야 이게"]
    answer = await client(server, KEY).moderations.create(input=texts, model="omni-moderation-latest")
    assert [r.flagged for r in answer.results] == [False, True, False, True]


async def test_raw_http_answer_has_every_openai_category_and_only_harassment_judged(server: TrainerProcess) -> None:
    """Raw JSON: 13 categories with scores; unjudged ones are false, 0 and applied to no input type."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/moderations", json={"input": "you are a stupid idiot"},
                             headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status == 200 and response.content_type == "application/json"
            body = await response.json()
    (result,) = body["results"]
    assert set(body) == {"id", "model", "results"}
    assert tuple(result["categories"]) == moderation.CATEGORIES == tuple(result["category_scores"])
    assert result["flagged"] is True and result["category_scores"]["harassment"] > 0.5
    unjudged = [name for name in moderation.CATEGORIES if name != "harassment"]
    assert all(result["categories"][n] is False and result["category_scores"][n] == 0.0 for n in unjudged)
    assert all(result["category_applied_input_types"][n] == [] for n in unjudged)


async def test_raw_http_text_parts_are_one_input_and_images_are_refused(server: TrainerProcess) -> None:
    """Multi-modal text parts are judged as one input; an image part gets a 400 envelope naming input."""
    headers = {"Authorization": f"Bearer {KEY}"}
    parts = [{"type": "text", "text": "this model is"}, {"type": "text", "text": "fucking useless"}]
    image = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/moderations", json={"input": parts}, headers=headers) as response:
            results = (await response.json())["results"]
        async with http.post(f"{server.base_url}/moderations", json={"input": image}, headers=headers) as response:
            refused = response.status, (await response.json())["error"]
    assert [r["flagged"] for r in results] == [True]
    assert refused[0] == 400 and (refused[1]["param"], refused[1]["code"]) == ("input", "unsupported_input")


@pytest.mark.parametrize(("body", "param"), [
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": [1, 2]}, "input"),
    ({"input": "hi", "model": "gpt-4o"}, "model"),
])
async def test_bad_request_gets_400_naming_param(server: TrainerProcess, body: dict[str, object], param: str) -> None:
    """A missing or malformed input, or an unknown model, is refused in OpenAI's envelope."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client(server, KEY).post("/moderations", body=body, cast_to=object)
    assert caught.value.status_code == 400 and caught.value.param == param


async def test_without_the_key_moderation_is_refused(server: TrainerProcess) -> None:
    """The endpoint sits behind the same key as the rest of the API."""
    with pytest.raises(openai.AuthenticationError):
        await client(server, "wrong").moderations.create(input="hello")


async def test_moderator_without_libraries_answers_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """When korcen is not installed, the moderator says so instead of passing texts."""
    def missing() -> moderation.Filters:
        raise ModuleNotFoundError("No module named 'korcen'", name="korcen")

    monkeypatch.setattr(moderation, "Filters", missing)
    assert await moderation.Moderator().classify(["hello"]) is None


@pytest.mark.parametrize("question", ["How do clouds move?", "Where do clouds come from?", "What makes wind blow?"])
def test_plain_science_questions_are_not_held_back(filters: moderation.Filters, question: str) -> None:
    """Attack (found by the persona test): at the classifier's own threshold a student asking how clouds move was told
    the safety check flagged the question."""
    assert not filters.classify([question])[0].flagged


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_labelled_set_meets_precision_and_recall_goals(filters: moderation.Filters, lang: str) -> None:
    """On >= 100 classroom messages per language, precision >= 90% and recall >= 80%."""
    rows = labelled(lang)
    assert len(rows) >= 100
    flagged = [v.flagged for v in filters.classify([text for text, _ in rows])]
    hits = sum(f and truth for f, (_, truth) in zip(flagged, rows))
    precision, recall = hits / sum(flagged), hits / sum(truth for _, truth in rows)
    assert precision >= MIN_PRECISION and recall >= MIN_RECALL, (lang, precision, recall)


@pytest.mark.parametrize(("text", "flagged"), [
    ("ㅅㅂ", True), ("시 발", True), ("씨 발", True), ("존나 어렵다", True), ("ㅂㅅ아", True),
    ("시발점이 어디야?", False), ("수박씨 발라 먹어야 해", False), ("우리 반은 18명이야", False),
])
def test_korean_spacing_and_jamo_count_as_korcen_counts_them(filters: moderation.Filters, text: str,
                                                             flagged: bool) -> None:
    """Jamo abbreviations and spaced-out swears are caught; the usual innocent look-alikes are not."""
    assert filters.classify([text])[0].flagged is flagged


def test_korcen_is_not_run_on_latin_text(filters: moderation.Filters) -> None:
    """korcen's lists misfire on English ("Sussex"); it reads only words with Hangul."""
    assert filters.words.signals("We visited Sussex and Essex") == []
    assert not filters.classify(["We visited Sussex"])[0].flagged


@pytest.mark.parametrize("text", ["nice tits lol", "im so horny", "kys", "send nudes", "she is a MILF",
                                  "blowjob jokes in chat"])
def test_english_words_the_classifier_misses_are_flagged(filters: moderation.Filters, text: str) -> None:
    """Sexual words and a self-harm taunt that alt-profanity-check scores under 0.8 (tits 0.72, horny 0.50, kys 0.04,
    milf 0.04, blowjob 0.04) are flagged by the extra English word list."""
    assert filters.classify([text])[0].flagged


@pytest.mark.parametrize("text", ["The titanic sank in 1912", "Tell me about the titmouse", "Why do skys look blue?",
                                  "A nude painting by Rembrandt", "My homework is done"])
def test_extra_english_words_match_whole_words_only(filters: moderation.Filters, text: str) -> None:
    """The list matches whole words: 'titanic', 'titmouse' and 'skys' pass, and so does an art lesson's 'nude'."""
    assert not filters.classify([text])[0].flagged


@pytest.mark.parametrize(("text", "words"), [
    ("학생증이 없으면 ㅅㅂ 빌릴 수 없어요", ["ㅅㅂ"]),
    ("숙제 씨발 진짜 많네, 이 병신아", ["씨발", "병신아"]),
    ("just kys already", ["kys"]),
])
def test_flagged_words_are_named_by_their_place_in_the_text(filters: moderation.Filters, text: str,
                                                             words: list[str]) -> None:
    """A flagged text names where its flagged words are (offsets into the text as sent), so the student sees them."""
    verdict = filters.verdict(text)
    assert verdict.flagged
    assert [text[start:end] for start, end in verdict.spans] == words
    assert verdict.result()["spans"] == [list(span) for span in verdict.spans]


def test_clean_text_and_whole_text_verdicts_name_no_words(filters: moderation.Filters) -> None:
    """A clean text has no spans, and its result no `spans` key (OpenAI's shape stays as it was)."""
    verdict = filters.verdict("다시 발급받은 뒤 빌려 주세요")
    assert not verdict.flagged and verdict.spans == () and "spans" not in verdict.result()
