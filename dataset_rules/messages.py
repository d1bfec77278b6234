"""The message catalog for dataset findings, in English and Korean, written for a 15-year-old.

The bot's i18n merges MESSAGES under the keys `finding.<code>`; HINTS add a second sentence for a specific case.
"""
from __future__ import annotations

ERROR_CODES: frozenset[str] = frozenset({
    "empty_file", "invalid_encoding", "not_jsonl", "invalid_json", "data_type", "missing_messages_list",
    "message_missing_key", "message_unrecognized_key", "unrecognized_role", "missing_content",
    "example_missing_assistant_message", "invalid_weight", "invalid_tool_call", "image_in_assistant",
    "too_many_images", "invalid_preference", "mixed_formats", "unsupported_format", "too_few_examples",
    "file_too_large",
    # Added beyond datasets.md:
    "invalid_content", "table_missing_columns", "table_cell_too_large", "table_too_large",
})
WARNING_CODES: frozenset[str] = frozenset({
    "blank_line", "utf8_bom", "example_too_long", "missing_system_message", "missing_user_message",
    "duplicate_example", "few_examples", "possible_personal_data", "validation_overlap", "model_retired",
    # Added beyond datasets.md:
    "preference_outputs_identical",
})

MESSAGES: dict[str, dict[str, str]] = {
    "empty_file": {
        "en": "The file is empty. Put at least 10 examples in it, one per line.",
        "ko": "파일이 비어 있어요. 한 줄에 예시 하나씩, 최소 10개를 넣어 주세요.",
    },
    "invalid_encoding": {
        "en": "The file is not saved as UTF-8 (it looks like {encoding}). Open it and save it again as 'UTF-8'.",
        "ko": "파일이 UTF-8로 저장되지 않았어요({encoding}인 것 같아요). 파일을 열어서 'UTF-8'로 다시 저장해 주세요.",
    },
    "not_jsonl": {
        "en": "This is one big JSON block, but each example must sit on its own single line (JSONL). "
              "Remove the [ ] around everything and write one {{...}} object per line.",
        "ko": "파일 전체가 하나의 큰 JSON 덩어리예요. 예시 하나가 한 줄에 딱 들어가야 해요(JSONL). "
              "전체를 감싼 [ ]를 지우고 한 줄에 {{...}} 하나씩 써 주세요.",
    },
    "invalid_json": {
        "en": "This line is not valid JSON (the problem is near character {column}). Check the quotes, commas and brackets.",
        "ko": "이 줄은 올바른 JSON이 아니에요({column}번째 글자 근처에 문제가 있어요). 따옴표, 쉼표, 괄호를 확인해 주세요.",
    },
    "data_type": {
        "en": "This line is JSON but not an object: it is {found}. Each line must look like {{\"messages\": [...]}}.",
        "ko": "이 줄은 JSON이지만 객체가 아니라 {found}예요. 각 줄은 {{\"messages\": [...]}} 모양이어야 해요.",
    },
    "missing_messages_list": {
        "en": "This example has no \"messages\" list. Write it as {{\"messages\": [{{\"role\": \"user\", ...}}, "
              "{{\"role\": \"assistant\", ...}}]}}.",
        "ko": "이 예시에는 \"messages\" 목록이 없어요. {{\"messages\": [{{\"role\": \"user\", ...}}, "
              "{{\"role\": \"assistant\", ...}}]}} 모양으로 써 주세요.",
    },
    "message_missing_key": {
        "en": "Message {index} has no \"{key}\". Add \"{key}\" to it.",
        "ko": "{index}번째 메시지에 \"{key}\"가 없어요. \"{key}\"를 넣어 주세요.",
    },
    "message_unrecognized_key": {
        "en": "Message {index} has a key \"{key}\" that is not allowed. Remove it or check its spelling "
              "(allowed: role, content, name, weight, tool_calls, tool_call_id).",
        "ko": "{index}번째 메시지에 쓸 수 없는 키 \"{key}\"가 있어요. 지우거나 철자를 확인해 주세요 "
              "(쓸 수 있는 키: role, content, name, weight, tool_calls, tool_call_id).",
    },
    "unrecognized_role": {
        "en": "Message {index} has the role \"{role}\", which is not allowed. Use system, user, assistant or tool.",
        "ko": "{index}번째 메시지의 role \"{role}\"은(는) 쓸 수 없어요. system, user, assistant, tool 중에서 써 주세요.",
    },
    "missing_content": {
        "en": "Message {index} ({role}) has no text. Write what it should say in \"content\".",
        "ko": "{index}번째 메시지({role})에 내용이 없어요. \"content\"에 할 말을 써 주세요.",
    },
    "invalid_content": {
        "en": "Message {index} ({role}) has \"content\" in a form the API does not accept. "
              "Use plain text in quotes.",
        "ko": "{index}번째 메시지({role})의 \"content\" 형식을 API가 받지 않아요. 따옴표 안에 글로 써 주세요.",
    },
    "example_missing_assistant_message": {
        "en": "This example has no assistant answer to learn from. Add a message with \"role\": \"assistant\".",
        "ko": "이 예시에는 모델이 배울 assistant 답변이 없어요. \"role\": \"assistant\"인 메시지를 넣어 주세요.",
    },
    "invalid_weight": {
        "en": "Message {index} has \"weight\": {weight}. Weight may only be 0 or 1, and only on assistant messages.",
        "ko": "{index}번째 메시지의 \"weight\"가 {weight}예요. weight는 0 또는 1만 되고, assistant 메시지에만 쓸 수 있어요.",
    },
    "invalid_tool_call": {
        "en": "A tool call, tool result or tool list (\"tools\") in this example is written the wrong way.",
        "ko": "이 예시의 도구 호출(tool call), 도구 결과 또는 도구 목록(\"tools\")이 잘못 쓰였어요.",
    },
    "image_in_assistant": {
        "en": "Message {index} is an assistant message with an image. Images may only be in user messages.",
        "ko": "{index}번째 assistant 메시지에 이미지가 있어요. 이미지는 user 메시지에만 넣을 수 있어요.",
    },
    "too_many_images": {
        "en": "This example has {count} images; at most 10 are allowed. Split it into smaller examples.",
        "ko": "이 예시에 이미지가 {count}개 있어요. 최대 10개까지만 돼요. 예시를 여러 개로 나눠 주세요.",
    },
    "invalid_preference": {
        "en": "This preference example is not written correctly. It needs \"input\" with messages, and exactly one "
              "assistant message in \"preferred_output\" and one in \"non_preferred_output\".",
        "ko": "이 선호도(preference) 예시가 잘못 쓰였어요. messages가 있는 \"input\"과, \"preferred_output\"과 "
              "\"non_preferred_output\"에 각각 assistant 메시지가 딱 하나씩 있어야 해요.",
    },
    "mixed_formats": {
        "en": "This line is in {found} format, but the file is in {expected} format. Use one format for every line.",
        "ko": "이 줄은 {found} 형식인데 파일은 {expected} 형식이에요. 모든 줄을 같은 형식으로 써 주세요.",
    },
    "unsupported_format": {
        "en": "The {found} format cannot be used to train {model}.",
        "ko": "{found} 형식으로는 {model} 모델을 학습시킬 수 없어요.",
    },
    "too_few_examples": {
        "en": "The file has only {count} usable example(s), but training needs at least 10. Add more examples "
              "(50 to 100 good ones work best).",
        "ko": "쓸 수 있는 예시가 {count}개뿐이에요. 학습하려면 최소 10개가 필요해요. 예시를 더 넣어 주세요 "
              "(좋은 예시 50~100개가 가장 좋아요).",
    },
    "file_too_large": {
        "en": "The file is larger than {limit_mb} MB. Use fewer or shorter examples.",
        "ko": "파일이 {limit_mb}MB보다 커요. 예시 수를 줄이거나 더 짧게 만들어 주세요.",
    },
    "table_too_large": {
        "en": "As a training file this table becomes more than {limit_mb} MB (each row grows when it is written as "
              "a chat example). Use fewer rows or shorter cells.",
        "ko": "이 표를 학습 파일로 바꾸면 {limit_mb}MB보다 커져요(각 줄이 대화 예시로 바뀌면서 길어져요). "
              "줄 수를 줄이거나 칸의 내용을 짧게 해 주세요.",
    },
    "table_missing_columns": {
        "en": "The table needs a header row with a question column and an answer column (found: {columns}). "
              "Name the first row's columns \"question\" and \"answer\".",
        "ko": "표의 첫 줄에 질문 열과 답변 열의 이름이 있어야 해요(지금: {columns}). "
              "첫 줄의 열 이름을 \"question\"과 \"answer\"(또는 \"질문\"과 \"답변\")로 써 주세요.",
    },
    "table_cell_too_large": {
        "en": "A cell in this row is longer than {limit_kb} KB, more than any model reads as one example. "
              "Shorten it or split it into several rows.",
        "ko": "이 줄의 칸 하나가 {limit_kb}KB보다 길어서 모델이 예시 하나로 읽을 수 있는 양을 넘어요. "
              "짧게 줄이거나 여러 줄로 나눠 주세요.",
    },
    "blank_line": {
        "en": "This line is empty. It is skipped, but you can delete it.",
        "ko": "빈 줄이에요. 건너뛰지만 지워 주는 게 좋아요.",
    },
    "utf8_bom": {
        "en": "The file starts with an invisible BOM mark. It is fine here, but some tools choke on it: "
              "save as 'UTF-8' without BOM.",
        "ko": "파일 맨 앞에 보이지 않는 BOM 표시가 있어요. 여기서는 괜찮지만 문제가 될 수 있으니 "
              "'BOM 없는 UTF-8'로 저장해 주세요.",
    },
    "example_too_long": {
        "en": "This example has {tokens} tokens, more than the model's limit of {limit}. The end will be cut off: "
              "make it shorter.",
        "ko": "이 예시는 토큰이 {tokens}개로, 모델 한도 {limit}개보다 많아요. 뒷부분이 잘리니 더 짧게 만들어 주세요.",
    },
    "missing_system_message": {
        "en": "This example has no system message. That's allowed, but one short system message in every example "
              "helps the model know its job.",
        "ko": "이 예시에는 system 메시지가 없어요. 괜찮지만, 모든 예시에 짧은 system 메시지를 넣으면 "
              "모델이 자기 역할을 더 잘 알아요.",
    },
    "missing_user_message": {
        "en": "This example has no user message. Usually each example shows what a user asks and what the "
              "assistant answers.",
        "ko": "이 예시에는 user 메시지가 없어요. 보통은 사용자가 묻는 말과 assistant의 답이 함께 있어야 해요.",
    },
    "duplicate_example": {
        "en": "This example is an exact copy of an earlier one. Copies make the model memorise: delete or change it.",
        "ko": "이 예시는 앞에 있는 예시와 똑같아요. 똑같은 예시는 모델이 외우게 만들어요. 지우거나 바꿔 주세요.",
    },
    "few_examples": {
        "en": "Only {count} examples. Training will run, but 50 to 100 good examples usually show a clear change.",
        "ko": "예시가 {count}개뿐이에요. 학습은 되지만, 좋은 예시가 50~100개 있어야 보통 확실히 달라져요.",
    },
    "possible_personal_data": {
        "en": "This line may contain personal data.",
        "ko": "이 줄에 개인정보가 들어 있을 수 있어요.",
    },
    "validation_overlap": {
        "en": "This validation example also stands in the training file. Validation examples must be new to the "
              "model, or the validation score means nothing: remove it from one of the files.",
        "ko": "이 검증(validation) 예시가 학습 파일에도 있어요. 검증 예시는 모델이 처음 보는 것이어야 점수가 "
              "의미 있어요. 둘 중 한 파일에서 지워 주세요.",
    },
    "model_retired": {
        "en": "The model {model} was shut down on {date}. The check still ran, but pick a current model to train.",
        "ko": "{model} 모델은 {date}에 서비스가 끝났어요. 검사는 했지만, 학습하려면 지금 쓸 수 있는 모델을 골라 주세요.",
    },
    "preference_outputs_identical": {
        "en": "The preferred and non-preferred answers are the same, so there is nothing to prefer. Make them differ.",
        "ko": "좋은 답(preferred)과 나쁜 답(non_preferred)이 똑같아서 비교할 게 없어요. 서로 다르게 써 주세요.",
    },
}

HINTS: dict[str, dict[str, str]] = {
    "trailing_comma": {
        "en": "There is an extra comma before a closing bracket or at the end of the line: remove it.",
        "ko": "닫는 괄호 앞이나 줄 끝에 쉼표가 하나 더 있어요. 지워 주세요.",
    },
    "smart_quotes": {
        "en": "It uses curly quotes (“ ”); JSON needs straight quotes (\"). Turn off 'smart quotes' and retype them.",
        "ko": "둥근 따옴표(“ ”)가 쓰였어요. JSON에는 곧은 따옴표(\")가 필요해요. '스마트 따옴표'를 끄고 다시 써 주세요.",
    },
    "single_quotes": {
        "en": "It uses single quotes ('); JSON needs double quotes (\").",
        "ko": "작은따옴표(')가 쓰였어요. JSON에는 큰따옴표(\")가 필요해요.",
    },
    "utf16": {
        "en": "Excel and Notepad call this 'Unicode'; choose 'UTF-8' in the save dialog instead.",
        "ko": "엑셀과 메모장에서는 이것을 '유니코드'라고 불러요. 저장할 때 'UTF-8'을 골라 주세요.",
    },
    "cp949": {
        "en": "Korean Excel saves CSV this way by default; choose 'CSV UTF-8' when saving.",
        "ko": "한국어 엑셀은 기본으로 이렇게 저장해요. 저장할 때 'CSV UTF-8'을 골라 주세요.",
    },
    "too_deep": {
        "en": "Its brackets are nested thousands of levels deep; a training example never looks like that.",
        "ko": "괄호가 수천 겹으로 겹쳐 있어요. 학습 예시는 이런 모양이 아니에요.",
    },
    "role_case": {
        "en": "Roles are lowercase: write \"{suggestion}\".",
        "ko": "role은 소문자로 써요: \"{suggestion}\"으로 써 주세요.",
    },
    "role_suggestion": {
        "en": "Did you mean \"{suggestion}\"?",
        "ko": "\"{suggestion}\"을(를) 쓰려던 건가요?",
    },
    "developer_role": {
        "en": "\"developer\" is only for reinforcement training; use \"system\" here.",
        "ko": "\"developer\"는 강화 학습에서만 써요. 여기서는 \"system\"을 써 주세요.",
    },
    "message_not_object": {
        "en": "Each message must be an object like {{\"role\": \"user\", \"content\": \"...\"}}.",
        "ko": "메시지는 {{\"role\": \"user\", \"content\": \"...\"}} 같은 객체여야 해요.",
    },
    "content_parts": {
        "en": "A list of parts may only hold {{\"type\": \"text\", \"text\": ...}} and, in user messages, "
              "{{\"type\": \"image_url\", \"image_url\": {{\"url\": ...}}}}.",
        "ko": "목록 형태의 content에는 {{\"type\": \"text\", \"text\": ...}}와, user 메시지에서는 "
              "{{\"type\": \"image_url\", \"image_url\": {{\"url\": ...}}}}만 넣을 수 있어요.",
    },
    "image_not_user": {
        "en": "Images may only be in user messages.",
        "ko": "이미지는 user 메시지에만 넣을 수 있어요.",
    },
    "all_weight_zero": {
        "en": "Every assistant message has \"weight\": 0, so there is nothing to learn: set at least one to 1.",
        "ko": "모든 assistant 메시지의 \"weight\"가 0이라서 배울 게 없어요. 적어도 하나는 1로 해 주세요.",
    },
    "arguments_not_string": {
        "en": "\"arguments\" must be JSON written inside a string, like \"{{\\\"city\\\": \\\"Seoul\\\"}}\".",
        "ko": "\"arguments\"는 문자열 안에 쓴 JSON이어야 해요. 예: \"{{\\\"city\\\": \\\"Seoul\\\"}}\".",
    },
    "arguments_not_json": {
        "en": "The text in \"arguments\" is not valid JSON.",
        "ko": "\"arguments\" 안의 글이 올바른 JSON이 아니에요.",
    },
    "tool_call_fields": {
        "en": "Each tool call needs \"id\", \"type\": \"function\" and \"function\" with \"name\" and \"arguments\".",
        "ko": "도구 호출마다 \"id\", \"type\": \"function\", 그리고 \"name\"과 \"arguments\"가 있는 \"function\"이 있어야 해요.",
    },
    "tool_calls_not_assistant": {
        "en": "Only assistant messages may have \"tool_calls\".",
        "ko": "\"tool_calls\"는 assistant 메시지에만 쓸 수 있어요.",
    },
    "tool_without_id": {
        "en": "A tool message needs \"tool_call_id\": the id of the tool call it answers.",
        "ko": "tool 메시지에는 자기가 답하는 도구 호출의 id인 \"tool_call_id\"가 있어야 해요.",
    },
    "tools_malformed": {
        "en": "The example's \"tools\" must be a list of {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.",
        "ko": "예시의 \"tools\"는 {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}의 목록이어야 해요.",
    },
    "function_call_malformed": {
        "en": "\"function_call\" needs \"name\" and \"arguments\" (a string), and only on assistant messages.",
        "ko": "\"function_call\"에는 \"name\"과 문자열 \"arguments\"가 있어야 하고, assistant 메시지에만 쓸 수 있어요.",
    },
    "prompt_completion": {
        "en": "Today's chat models learn from conversations: write each line as {{\"messages\": [{{\"role\": \"user\", "
              "\"content\": PROMPT}}, {{\"role\": \"assistant\", \"content\": COMPLETION}}]}}, or save your data as a "
              "CSV with \"question\" and \"answer\" columns and the bot converts it.",
        "ko": "요즘 채팅 모델은 대화로 배워요. 각 줄을 {{\"messages\": [{{\"role\": \"user\", \"content\": PROMPT}}, "
              "{{\"role\": \"assistant\", \"content\": COMPLETION}}]}}로 바꾸거나, \"question\"과 \"answer\" 열이 "
              "있는 CSV로 저장하면 봇이 바꿔 줘요.",
    },
    "preference_model": {
        "en": "Preference (DPO) training needs a model that supports it, like gpt-4.1-mini; or write normal chat "
              "examples.",
        "ko": "선호도(DPO) 학습은 gpt-4.1-mini처럼 그것을 지원하는 모델이 필요해요. 아니면 일반 채팅 예시로 써 주세요.",
    },
    "images_model": {
        "en": "Examples with images need a model that can see images, like gpt-4o-2024-08-06.",
        "ko": "이미지가 있는 예시는 gpt-4o-2024-08-06처럼 이미지를 볼 수 있는 모델이 필요해요.",
    },
    "input_malformed": {
        "en": "Check \"input\": it must be {{\"messages\": [...]}} with at least one message.",
        "ko": "\"input\"을 확인해 주세요. 메시지가 하나 이상 있는 {{\"messages\": [...]}}여야 해요.",
    },
    "outputs_malformed": {
        "en": "Check \"{key}\": it must be a list with exactly one {{\"role\": \"assistant\", \"content\": \"...\"}}.",
        "ko": "\"{key}\"를 확인해 주세요. {{\"role\": \"assistant\", \"content\": \"...\"}} 하나만 든 목록이어야 해요.",
    },
    "text_only": {
        "en": "Preference examples may only contain text, no images.",
        "ko": "선호도 예시에는 글만 넣을 수 있고 이미지는 안 돼요.",
    },
    "wrap_messages": {
        "en": "It is a list of messages: put {{\"messages\": ...}} around it.",
        "ko": "메시지 목록만 있어요. 앞뒤를 {{\"messages\": ...}}로 감싸 주세요.",
    },
    "sharegpt": {
        "en": "This looks like ShareGPT data (\"conversations\" with \"from\"/\"value\"): rename \"conversations\" to "
              "\"messages\", \"from\" to \"role\" (human -> user, gpt -> assistant) and \"value\" to \"content\".",
        "ko": "ShareGPT 형식(\"from\"/\"value\"가 있는 \"conversations\")으로 보여요. \"conversations\"는 \"messages\"로, "
              "\"from\"은 \"role\"로(human은 user, gpt는 assistant), \"value\"는 \"content\"로 바꿔 주세요.",
    },
    "alpaca": {
        "en": "This looks like instruction/output data: save it as a CSV with \"question\" and \"answer\" columns "
              "and the bot converts it, or write each line as {{\"messages\": [...]}}.",
        "ko": "instruction/output 형식으로 보여요. \"question\"과 \"answer\" 열이 있는 CSV로 저장하면 봇이 바꿔 주고, "
              "아니면 각 줄을 {{\"messages\": [...]}}로 써 주세요.",
    },
    "table_cell": {
        "en": "In your table, a question or answer cell of this row is empty: fill it in.",
        "ko": "표의 이 줄에 질문이나 답변 칸이 비어 있어요. 채워 주세요.",
    },
    "email": {
        "en": "It looks like an e-mail address. Replace it with a made-up one (like student@example.com).",
        "ko": "이메일 주소처럼 보여요. 지어낸 주소(예: student@example.com)로 바꿔 주세요.",
    },
    "phone": {
        "en": "It looks like a phone number. Replace it with a made-up one (like 010-0000-0000).",
        "ko": "전화번호처럼 보여요. 지어낸 번호(예: 010-0000-0000)로 바꿔 주세요.",
    },
}


def i18n_entries() -> dict[str, dict[str, str]]:
    """Return the catalog as the bot's i18n keys: `finding.<code>` and `finding.hint.<hint>` -> {locale: text}."""
    entries = {f"finding.{code}": dict(texts) for code, texts in MESSAGES.items()}
    entries.update({f"finding.hint.{hint}": dict(texts) for hint, texts in HINTS.items()})
    return entries
