"""The rules of one example: a chat's messages, roles, tool calls, weights and content parts, and a preference (DPO)
pair. Each check also collects the example's texts for the token count and returns its fixed token overhead."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import tiktoken

from dataset_rules import models, tokens
from dataset_rules.check.reading import json_type
from dataset_rules.check.report import Recorder

MAX_IMAGES_PER_EXAMPLE = 10
ALLOWED_ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
ALLOWED_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "weight", "tool_calls", "function_call", "refusal", "tool_call_id"}
)
ROLE_SUGGESTIONS = {
    "bot": "assistant", "ai": "assistant", "model": "assistant", "gpt": "assistant", "chatgpt": "assistant",
    "answer": "assistant", "response": "assistant", "human": "user", "student": "user", "question": "user",
    "prompt": "user", "instruction": "system",
}


class Where(NamedTuple):
    """Which message a finding is about: its line, its 1-based index in the example, and its file."""

    line: int
    message: int
    order: int
    file_label: str


class _Seen(NamedTuple):
    """What one message adds to its example: its role, token overhead, images, and whether it is learned from."""

    role: str
    overhead: int
    images: int
    learnable: bool


class ExampleRules:
    """Checks the examples of one run against one model."""

    def __init__(self, info: models.ModelInfo, encoding: tiktoken.Encoding, recorder: Recorder) -> None:
        self.info = info
        self._add = recorder.add
        self.file_level_seen: set[str] = set()  # file-level findings raised once, not per example
        # Roles cost a tokenizer call each yet never change; a class's system prompt is usually the same on every
        # line. Counting each once (bounded cache) removes a third to a half of all tokenizer calls.
        self.role_tokens = {role: len(encoding.encode_ordinary(role)) for role in ALLOWED_ROLES}
        self.repeat_cache: dict[str, int] = {}
        self.new_repeats: list[tuple[int, str]] = []  # (text index, text) of system prompts to count and remember

    def check_chat(self, obj: dict[str, Any], line_no: int, texts: list[str], order: int, file_label: str) -> int:
        """Validate one chat example, append its texts; return the fixed token overhead."""
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            self._add(line_no, "missing_messages_list", order, file_label)
            return 0
        if "tools" in obj and not valid_tools(obj["tools"]):
            self._add(line_no, "invalid_tool_call", order, file_label, index=0, hint="tools_malformed")
        overhead, roles, images, learnable = self.check_messages(
            messages, line_no, texts, order, file_label, allow_images=True
        )
        if "assistant" not in roles:
            self._add(line_no, "example_missing_assistant_message", order, file_label)
        elif not learnable:
            self._add(line_no, "example_missing_assistant_message", order, file_label, hint="all_weight_zero")
        if images > MAX_IMAGES_PER_EXAMPLE:
            self._add(line_no, "too_many_images", order, file_label, count=images)
        if images and not self.info.supports_images and "images" not in self.file_level_seen:
            self.file_level_seen.add("images")
            self._add(line_no, "unsupported_format", order, file_label, found="chat with images",
                      model=self.info.name, hint="images_model")
        if "system" not in roles:
            self._add(line_no, "missing_system_message", order, file_label)
        if "user" not in roles:
            self._add(line_no, "missing_user_message", order, file_label)
        return overhead + tokens.TOKENS_PER_EXAMPLE

    def check_messages(
        self, messages: list[Any], line_no: int, texts: list[str], order: int, file_label: str, *, allow_images: bool
    ) -> tuple[int, set[str], int, bool]:
        """Validate messages; return (token overhead, roles seen, image count, has a learnable assistant)."""
        add = self._add
        overhead = 0
        roles: set[str] = set()
        images = 0
        learnable = False
        append = texts.append
        role_tokens = self.role_tokens
        for i, message in enumerate(messages, start=1):
            overhead += tokens.TOKENS_PER_MESSAGE
            if not isinstance(message, dict):
                add(line_no, "data_type", order, file_label, found=json_type(message), hint="message_not_object")
                continue
            role = message.get("role")
            # The cookbook's fast path: {"role": str, "content": str}, the shape of nearly every line.
            if len(message) == 2 and role in ("user", "assistant", "system") and type(message.get("content")) is str:
                content = message["content"]
                roles.add(role)
                if role == "assistant":
                    learnable = True
                if not content.strip():
                    add(line_no, "missing_content", order, file_label, index=i, role=role)
                overhead += role_tokens[role]
                if role == "system":
                    cached = self.repeat_cache.get(content)
                    if cached is not None:
                        overhead += cached
                        continue
                    self.new_repeats.append((len(texts), content))
                append(content)
                continue
            seen = self._check_message(message, role, Where(line_no, i, order, file_label), texts, allow_images)
            if seen is not None:
                roles.add(seen.role)
                overhead += seen.overhead
                images += seen.images
                learnable = learnable or seen.learnable
        return overhead, roles, images, learnable

    def _check_message(
        self, message: dict[str, Any], role: object, where: Where, texts: list[str], allow_images: bool
    ) -> _Seen | None:
        """Validate a message of any shape but the plain {"role", "content"}; None when its role is missing or unknown."""
        add, (line_no, i, order, file_label) = self._add, where
        for key in message:
            if key not in ALLOWED_MESSAGE_KEYS:
                add(line_no, "message_unrecognized_key", order, file_label, index=i, key=str(key))
        if role is None:
            add(line_no, "message_missing_key", order, file_label, index=i, key="role")
            return None
        if not isinstance(role, str) or role not in ALLOWED_ROLES:
            add(line_no, "unrecognized_role", order, file_label, index=i, **_role_hint(role))
            return None
        overhead = self.role_tokens[role]
        for key in ("name", "tool_call_id", "refusal"):
            value = message.get(key)
            if isinstance(value, str):
                texts.append(value)
                if key == "name":
                    overhead += tokens.TOKENS_PER_NAME
        has_call = self._check_calls(message, role, where, texts)
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            add(line_no, "invalid_tool_call", order, file_label, index=i, hint="tool_without_id")
        if role == "function" and not isinstance(message.get("name"), str):
            add(line_no, "message_missing_key", order, file_label, index=i, key="name")
        if "weight" in message:
            weight = message["weight"]
            # 1.0 is the same JSON number as 1 to the API; true/false are not numbers.
            if role != "assistant" or isinstance(weight, bool) or weight not in (0, 1):
                add(line_no, "invalid_weight", order, file_label, index=i, weight=json.dumps(weight))
        learnable = role == "assistant" and message.get("weight", 1) != 0
        images = self._check_content(message, role, has_call, where, texts, allow_images)
        return _Seen(role, overhead, images, learnable)

    def _check_calls(self, message: dict[str, Any], role: str, where: Where, texts: list[str]) -> bool:
        """Validate a message's tool_calls and function_call (their strings count as text); return whether it has one."""
        add, (line_no, i, order, file_label) = self._add, where
        has_call = False
        if "tool_calls" in message:
            has_call = True
            if role != "assistant":
                add(line_no, "invalid_tool_call", order, file_label, index=i, hint="tool_calls_not_assistant")
            else:
                hint = _tool_calls_problem(message["tool_calls"])
                if hint:
                    add(line_no, "invalid_tool_call", order, file_label, index=i, hint=hint)
            _collect_strings(message["tool_calls"], texts)
        if "function_call" in message:
            has_call = True
            call = message["function_call"]
            well_formed = isinstance(call, dict) and all(
                isinstance(call.get(key), str) for key in ("name", "arguments")
            )
            if role != "assistant" or not well_formed:
                add(line_no, "invalid_tool_call", order, file_label, index=i, hint="function_call_malformed")
            _collect_strings(call, texts)
        return has_call

    def _check_content(
        self, message: dict[str, Any], role: str, has_call: bool, where: Where, texts: list[str], allow_images: bool
    ) -> int:
        """Validate a message's content: required text, except an assistant turn that only calls a tool; return images."""
        add, (line_no, i, order, file_label) = self._add, where
        if "content" not in message:
            if not (role == "assistant" and has_call):
                add(line_no, "message_missing_key", order, file_label, index=i, key="content")
            return 0
        content = message["content"]
        if isinstance(content, str):
            if not content.strip() and not (role == "assistant" and has_call):
                add(line_no, "missing_content", order, file_label, index=i, role=role)
            texts.append(content)
        elif content is None:
            if not (role == "assistant" and has_call):
                add(line_no, "missing_content", order, file_label, index=i, role=role)
        elif isinstance(content, list):
            return self._check_parts(content, role, i, line_no, texts, order, file_label, allow_images)
        else:
            add(line_no, "invalid_content", order, file_label, index=i, role=role)
        return 0

    def _check_parts(
        self, parts: list[Any], role: str, index: int, line_no: int, texts: list[str], order: int, file_label: str,
        allow_images: bool,
    ) -> int:
        """Validate list content (text and image parts); return the number of images."""
        if not parts:
            self._add(line_no, "missing_content", order, file_label, index=index, role=role)
            return 0
        images = 0
        has_text = False
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                has_text = has_text or bool(part["text"].strip())
            elif kind == "image_url" and isinstance(part.get("image_url"), dict) and isinstance(
                part["image_url"].get("url"), str
            ):
                images += 1
                if not allow_images:
                    self._add(line_no, "invalid_preference", order, file_label, hint="text_only")
                elif role == "assistant":
                    self._add(line_no, "image_in_assistant", order, file_label, index=index)
                elif role != "user":
                    self._add(line_no, "invalid_content", order, file_label, index=index, role=role,
                              hint="image_not_user")
            else:
                self._add(line_no, "invalid_content", order, file_label, index=index, role=role, hint="content_parts")
                return images  # one finding per message is enough; "no text" would only repeat it
        if not has_text and not images:
            self._add(line_no, "missing_content", order, file_label, index=index, role=role)
        return images

    def check_preference(
        self, obj: dict[str, Any], line_no: int, texts: list[str], order: int, file_label: str
    ) -> int:
        """Validate one DPO example, append its texts; return the fixed token overhead."""
        add = self._add
        overhead = tokens.TOKENS_PER_EXAMPLE
        source = obj.get("input")
        messages = source.get("messages") if isinstance(source, dict) else None
        if not isinstance(source, dict) or not isinstance(messages, list) or not messages:
            add(line_no, "invalid_preference", order, file_label, hint="input_malformed")
        else:
            if "tools" in source and not valid_tools(source["tools"]):
                add(line_no, "invalid_tool_call", order, file_label, index=0, hint="tools_malformed")
            more, _roles, _images, _learnable = self.check_messages(
                messages, line_no, texts, order, file_label, allow_images=False
            )
            overhead += more
        outputs: list[str] = []
        for key in ("preferred_output", "non_preferred_output"):
            value = obj.get(key)
            message = value[0] if isinstance(value, list) and len(value) == 1 else None
            content = message.get("content") if isinstance(message, dict) else None
            if (
                not isinstance(message, dict)
                or message.get("role") != "assistant"
                or not (isinstance(content, str) and content.strip())
                or set(message) - {"role", "content"}
            ):
                if isinstance(message, dict) and isinstance(content, list):
                    add(line_no, "invalid_preference", order, file_label, hint="text_only")
                else:
                    add(line_no, "invalid_preference", order, file_label, key=key, hint="outputs_malformed")
                continue
            overhead += tokens.TOKENS_PER_MESSAGE
            texts.append("assistant")
            texts.append(content)
            outputs.append(content)
        if len(outputs) == 2 and outputs[0].strip() == outputs[1].strip():
            add(line_no, "preference_outputs_identical", order, file_label)
        return overhead


def _role_hint(role: object) -> dict[str, str]:
    """Return the role as text plus a hint naming the role the student probably meant."""
    text = role if isinstance(role, str) else json.dumps(role, ensure_ascii=False)
    if isinstance(role, str):
        lowered = role.strip().lower()
        if lowered in ALLOWED_ROLES:
            return {"role": text, "hint": "role_case", "suggestion": lowered}
        if lowered == "developer":
            return {"role": text, "hint": "developer_role"}
        if lowered in ROLE_SUGGESTIONS:
            return {"role": text, "hint": "role_suggestion", "suggestion": ROLE_SUGGESTIONS[lowered]}
    return {"role": text}


def _tool_calls_problem(calls: object) -> str | None:
    """Return a hint key when `tool_calls` is malformed, else None."""
    if not isinstance(calls, list) or not calls:
        return "tool_call_fields"
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or call.get("type") != "function":
            return "tool_call_fields"
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            return "tool_call_fields"
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            return "arguments_not_string"
        try:
            json.loads(arguments)
        except (ValueError, RecursionError):
            return "arguments_not_json"
    return None


def valid_tools(tools: object) -> bool:
    """Return True for a list of function tool definitions."""
    if not isinstance(tools, list):
        return False
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            return False
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return False
    return True


def _collect_strings(value: object, texts: list[str]) -> None:
    """Append every string value nested in a JSON value (tool calls count as text the model writes)."""
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_strings(item, texts)
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, texts)
