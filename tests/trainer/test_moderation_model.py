"""The shipped moderation classifier: loads without pickle, scores as at training time, and holds up to issue 22's
bypasses and innocent phrases (all offline, in about a second)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from trainer import moderation
from trainer.moderation_model import MODEL_PATH, Model, feature_indices, jamo

LIBRARY_LINE_17 = "학생증이 없으면 빌릴 수 없어요. 행정실에서 학생증을 다시 발급받은 뒤 빌려 주세요."


@pytest.fixture(scope="module")
def filters() -> moderation.Filters:
    """The classifier and word lists as the trainer loads them, once for the module."""
    return moderation.Filters()


def test_model_file_is_plain_arrays_and_small() -> None:
    """Every array in the .npz is numbers or text (no object arrays), and the file is a few MB."""
    with np.load(MODEL_PATH, allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)
    assert MODEL_PATH.stat().st_size < 5_000_000


def test_model_loads_without_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading runs no pickle: with pickle's loaders broken the model still loads and scores."""
    def refused(*args: object, **kwargs: object) -> object:
        raise AssertionError("the model must not be unpickled")

    monkeypatch.setattr(pickle, "load", refused)
    monkeypatch.setattr(pickle, "loads", refused)
    assert 0.0 <= Model.load().score("hello") <= 1.0


def test_shipped_arrays_score_as_scikit_learn_did_at_training_time(filters: moderation.Filters) -> None:
    """The fixed texts' probabilities from the shipped (float16) arrays match the trained model's within 0.005."""
    with np.load(MODEL_PATH, allow_pickle=False) as data:
        texts, trained = [str(text) for text in data["fixed_texts"]], data["fixed_scores"]
    assert len(texts) >= 6
    shipped = [filters.model.score(text, filters.words.signals(text)) for text in texts]
    assert np.allclose(shipped, trained, atol=0.005), list(zip(texts, shipped, trained))


def test_other_feature_version_is_refused(tmp_path: Path) -> None:
    """A model file built with other features is refused at load instead of scoring nonsense."""
    with np.load(MODEL_PATH, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["feature_version"] = np.int64(-1)
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(ValueError, match="retrain"):
        Model.load(tmp_path / "old.npz")


def test_features_of_a_disguised_word_equal_the_plain_word() -> None:
    """The classifier reads normalised text: a zero-width space or full-width letters give the same features."""
    assert sorted(feature_indices("시\u200b발 진짜", 20)) == sorted(feature_indices("시발 진짜", 20))
    assert sorted(feature_indices("ｙｏｕ ｉｄｉｏｔ", 20)) == sorted(feature_indices("you idiot", 20))
    assert jamo("새끼") == "ㅅㅐㄲㅣ"


@pytest.mark.parametrize("text", [
    "시\u200b발 진짜 짜증나", "ｆｕｃｋ you", "f u c k you", "s h i t", "ѕhіt happens, you idiot", "ㅅㅣㅂㅏㄹ 진짜",
    "새ㄲI", "ㅅ키야", "시1발 이거 또 틀렸네", "씨-발", "병.신아", "ㅄ", "개 새 끼", "존 나 어렵네", "fuuuuck this",
    "sh1t", "b!tch please", "이 새ㅡ퀴 뭐냐", "범죄자색히", "드러운 뇬", "재미 좃도 없다",
])
def test_each_bypass_of_issue_22_is_caught(filters: moderation.Filters, text: str) -> None:
    """Zero-width spaces, full-width and look-alike letters, spaced-out letters, jamo and inserted marks are caught."""
    assert filters.verdict(text).flagged


@pytest.mark.parametrize("text", [
    LIBRARY_LINE_17, "다시 발급", "바디워시, 바디로션", "일본 자위대", "일본의 자위대는 군대인가요?", "수시 발표는 언제예요?",
    "새끼 고양이가 우유를 마셔요", "강아지 새끼 세 마리", "사자 새끼는 울타리를 오르려고 한다.", "달을 보지 못했다",
    "시발점이 어디야?", "수박씨 발라 먹어야 해", "우리 반은 18명이야", "How do clouds move?", "What makes wind blow?",
    "The titanic sank in 1912", "We visited Sussex and Essex", "Moby Dick is a novel by Herman Melville",
    "Dick Grayson was the first Robin", "ＭＯＢＹ ＤＩＣＫ", "I hate Mondays",
])
def test_innocent_phrases_pass(filters: moderation.Filters, text: str) -> None:
    """Issue 22's innocent texts (다시 발급, 바디워시, 자위대, 수시 발표, 시발점, baby animals) and older ones are not flagged."""
    assert not filters.verdict(text).flagged


def test_korean_typed_on_an_english_keyboard_or_romanised_is_caught(filters: moderation.Filters) -> None:
    """시발 typed with the Korean layout on an English keyboard is tlqkf; it and romanised spellings are caught as
    whole words, and English words that hold those letters pass."""
    assert moderation.keyboard("시발") == "tlqkf" and moderation.keyboard("병신") == "qudtls"
    assert all(filters.verdict(text).flagged for text in ["tlqkf 짜증나", "qudtls 아니냐", "WHSSK 어렵네", "sibal"])
    assert not any(filters.verdict(text).flagged for text in ["I like torte", "a tlqkfx typo", "Sibalik is a name"])


def test_korcen_never_matches_across_words(filters: moderation.Filters) -> None:
    """korcen reads each word alone: 다시 발급 and 시, 바 do not fire it; 시발 in one word does."""
    assert filters.words.signals("다시 발급받은 뒤") == [] and filters.words.signals("워시, 바디") == []
    assert "korcen" in filters.words.signals("시발 뭐야")


def test_every_shipped_lesson_message_passes(filters: moderation.Filters) -> None:
    """No message of any shipped lesson file (system, user or assistant) is flagged: a lesson always starts."""
    import json

    root = Path(__file__).resolve().parents[2] / "lessons"
    texts = [message["content"] for path in sorted(root.glob("*/*.jsonl"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
             for message in json.loads(line)["messages"] if isinstance(message.get("content"), str)]
    assert len(texts) > 300
    assert [text for text, verdict in zip(texts, filters.classify(texts)) if verdict.flagged] == []


@pytest.mark.parametrize("text", ["개새 끼", "이 개새 끼야", "시 발놈", "병 신아", "씨 발년아", "개새 끼들아"])
def test_a_swear_word_split_by_a_space_is_caught(filters: moderation.Filters, text: str) -> None:
    """A space inside a swear word (개새 끼, 시 발놈) does not get it past: the two parts are read as one word."""
    assert filters.verdict(text).flagged


@pytest.mark.parametrize("text", ["몇 시 발표야?", "오늘 다시 발 닦았어", "이 병 신기하다", "고양이 새 끼들이 잔다", "한 끼 먹자",
                                  "수시 발표는 언제예요?", "병 신고는 어디에 해요?"])
def test_ordinary_words_that_join_into_a_swear_word_stay_apart(filters: moderation.Filters, text: str) -> None:
    """Only a swear word split exactly in two is joined: 시 발표 (it would end inside 발표), 다시 발 (it would start
    inside 다시), 병 신기하다 and baby animals pass."""
    assert not filters.words.split_swear(moderation.prepared(text).split())
    assert not filters.verdict(text).flagged


@pytest.mark.parametrize("text", ["I hate it when it rains", "Why do people hate spiders?"])
def test_english_second_opinion_is_asked_only_over_the_gate(filters: moderation.Filters, text: str) -> None:
    """alt-profanity-check scores a mild complaint with "hate" as profane; it counts only where the classifier scores
    at least the gate chosen on OLID's dev split, so these pass."""
    norm = moderation.prepared(text)
    assert filters.model.english_words.score(norm) >= filters.model.english_words_threshold
    assert filters.model.score(norm, normalised=True) < filters.model.english_words_gate <= 1.01
    assert not filters.verdict(text).flagged
