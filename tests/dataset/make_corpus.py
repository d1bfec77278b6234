"""Write the dataset test corpus (run once; the files are committed): `python tests/dataset/make_corpus.py`."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent / "corpus"


def good(i: int) -> dict[str, object]:
    """Return a plain, valid chat example."""
    return {"messages": [
        {"role": "system", "content": "You are a kind science tutor."},
        {"role": "user", "content": f"What is fact number {i}?"},
        {"role": "assistant", "content": f"Fact number {i} is that water boils at 100 degrees."},
    ]}


def line(obj: object) -> str:
    """Return one JSONL line."""
    return json.dumps(obj, ensure_ascii=False)


def lines_with(bad: dict[int, str], total: int = 12) -> str:
    """Return `total` lines of good examples where the 1-based lines in `bad` are replaced."""
    return "".join((bad[n] if n in bad else line(good(n))) + "\n" for n in range(1, total + 1))


def pref(i: int, preferred: list[object] | None = None) -> dict[str, object]:
    """Return a preference (DPO) example."""
    return {
        "input": {"messages": [{"role": "user", "content": f"Say hello nicely, try {i}."}]},
        "preferred_output": preferred if preferred is not None else [
            {"role": "assistant", "content": f"Hello there, friend number {i}!"}],
        "non_preferred_output": [{"role": "assistant", "content": "hi"}],
    }


def write() -> None:
    """Write every corpus file."""
    HERE.mkdir(exist_ok=True)
    files: dict[str, bytes | str] = {}
    files["empty.jsonl"] = ""
    files["whitespace_only.jsonl"] = "\n  \n\n"
    files["utf16_from_notepad.jsonl"] = lines_with({}).encode("utf-16")
    cp949 = line({"messages": [{"role": "user", "content": "안녕하세요"}, {"role": "assistant", "content": "네"}]})
    files["cp949_line.jsonl"] = lines_with({}, 11).encode() + cp949.encode("cp949") + b"\n"
    files["json_array_pretty.jsonl"] = json.dumps([good(i) for i in range(12)], indent=2)
    files["json_array_one_line.jsonl"] = json.dumps([good(i) for i in range(12)]) + "\n"
    files["pretty_printed_objects.jsonl"] = "\n".join(json.dumps(good(i), indent=2) for i in range(12)) + "\n"
    files["trailing_comma.jsonl"] = lines_with({5: line(good(5)) + ","})
    smart = line(good(7)).replace('"', "\u201c", 1)
    files["smart_quotes.jsonl"] = lines_with({7: smart})
    files["data_type.jsonl"] = lines_with({3: '"just a string"', 4: "42"}, 14)
    files["missing_messages.jsonl"] = lines_with(
        {2: line({"conversation": good(2)["messages"]}), 3: line({"messages": "hi"}), 4: line({"messages": []})}, 15)
    user_case = good(4)
    user_case["messages"][1]["role"] = "User"  # type: ignore[index]
    bot_role = good(6)
    bot_role["messages"][2]["role"] = "bot"  # type: ignore[index]
    files["role_wrong.jsonl"] = lines_with({4: line(user_case), 6: line(bot_role)})
    files["role_missing.jsonl"] = lines_with({2: line({"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]})})
    files["unknown_key.jsonl"] = lines_with({9: line({"messages": [
        {"role": "user", "content": "hi", "emotion": "happy"}, {"role": "assistant", "content": "hello"}]})})
    files["content_null_or_empty.jsonl"] = lines_with({
        2: line({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "ok"}]}),
        3: line({"messages": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "  "}]}),
        4: line({"messages": [{"role": "user"}, {"role": "assistant", "content": "ok"}]}),
    })
    files["weight_wrong.jsonl"] = lines_with({
        3: line({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 2}]}),
        8: line({"messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "b"}]}),
    })
    files["assistant_missing_or_weight_zero.jsonl"] = lines_with({
        2: line({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "only a question"}]}),
        5: line({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}),
    })
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Seoul"}'}}
    bad_args = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Seoul"}}}
    tool_ok = [{"role": "user", "content": "Weather in Seoul?"}, {"role": "assistant", "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "15C, sunny"},
               {"role": "assistant", "content": "It is 15C and sunny in Seoul."}]
    tool_no_id = [dict(m) for m in tool_ok]
    del tool_no_id[2]["tool_call_id"]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    files["tool_calls_wrong.jsonl"] = lines_with({
        3: line({"messages": [tool_ok[0], {"role": "assistant", "tool_calls": [bad_args]}, *tool_ok[2:]], "tools": tools}),
        6: line({"messages": tool_no_id, "tools": tools}),
        9: line({"messages": tool_ok, "tools": [{"name": "get_weather"}]}),
    })
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    files["images_wrong.jsonl"] = lines_with({
        2: line({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]},
                              {"role": "assistant", "content": [image]}]}),
        4: line({"messages": [{"role": "user", "content": [image] * 11}, {"role": "assistant", "content": "cats"}]}),
    })
    files["images_on_mini.jsonl"] = lines_with({
        3: line({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]},
                              {"role": "assistant", "content": "A cat."}]}),
    })
    files["preference_two_preferred.jsonl"] = "".join(
        line(pref(i, [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}] if i == 4 else None)) + "\n"
        for i in range(1, 13))
    files["preference_good.jsonl"] = "".join(line(pref(i)) + "\n" for i in range(1, 13))
    files["prompt_completion.jsonl"] = "".join(
        line({"prompt": f"Q{i} ->", "completion": f" A{i}"}) + "\n" for i in range(1, 13))
    files["mixed_formats.jsonl"] = lines_with({
        5: line({"prompt": "Q ->", "completion": " A"}), 9: line({"prompt": "Q2 ->", "completion": " A2"})}, 14)
    files["too_few.jsonl"] = lines_with({}, 7)
    files["duplicates_and_personal_data.jsonl"] = lines_with({
        6: line(good(2)),
        8: line({"messages": [{"role": "user", "content": "Write to minji.kim@school.kr please"},
                              {"role": "assistant", "content": "OK"}]}),
        10: line({"messages": [{"role": "user", "content": "Call me: 010-1234-5678"},
                               {"role": "assistant", "content": "OK"}]}),
    })
    files["bom_crlf_blank_lines.jsonl"] = ("\ufeff" + lines_with({}).replace("\n", "\r\n")).replace(
        "\r\n", "\r\n\r\n", 3).encode("utf-8")
    long_text = " ".join(f"word{i}" for i in range(9000))
    files["long_example_gpt35.jsonl"] = lines_with({
        11: line({"messages": [{"role": "user", "content": long_text}, {"role": "assistant", "content": "ok"}]})})
    files["class_questions.csv"] = (
        "question,answer\n"
        "What is photosynthesis?,Plants making food from light.\n"
        "\"What is a cell,\nreally?\",The smallest unit of life.\n"
        "Why is the sky blue?,\n"
        + "".join(f"What is {i} plus {i}?,{2 * i}\n" for i in range(1, 11))
    )
    files["class_questions_ko.tsv"] = "질문\t답변\n" + "".join(f"{i} 더하기 {i}는?\t{2 * i}이에요.\n" for i in range(1, 13))
    files["table_bad_header.csv"] = "name,score\nMinji,90\n"
    files["train_for_overlap.jsonl"] = lines_with({})
    files["valid_overlapping.jsonl"] = "".join(line(good(n)) + "\n" for n in (3, 100, 101, 7))
    files["chat_tools_weights_parts.jsonl"] = "".join(line(x) + "\n" for x in [
        {"messages": tool_ok, "tools": tools, "parallel_tool_calls": False},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!", "weight": 0},
                      {"role": "user", "content": [{"type": "text", "text": "Again"}]},
                      {"role": "assistant", "content": "Hello again!", "weight": 1, "name": "tutor"}]},
    ] + [good(i) for i in range(20, 30)])
    files["korean.jsonl"] = "".join(line({"messages": [
        {"role": "system", "content": "당신은 친절한 과학 선생님이에요."},
        {"role": "user", "content": f"물은 몇 도에서 끓나요? ({i})"},
        {"role": "assistant", "content": "물은 1기압에서 100도에 끓어요. 산 위에서는 더 낮은 온도에서 끓어요."},
    ]}) + "\n" for i in range(1, 13))
    for name, content in files.items():
        (HERE / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


if __name__ == "__main__":
    write()
