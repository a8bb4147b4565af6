"""Chat prompts against transformers as the oracle: for tokenizer folders carrying the chat templates that well-known
model families publish, the prompt text and token ids we build equal AutoTokenizer's apply_chat_template (one bos
where a template writes it, special tokens as special ids, a template's refusal refused here too), and a chat reply
through the server and `neurallayers chat` ends at the template's end-of-turn token, listed in generation_config.json
but not the tokenizer's eos, as transformers' generate ends there, with that token's text left out."""

from __future__ import annotations

import io
import json
import re

import httpx
import pytest
import torch
from nl_serve_helpers import assert_ok_after, serving
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from neurallayers.data.chat import render_chat
from neurallayers.data.tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

# The chat_template strings of tokenizer_config.json, as the model families publish them.

# Llama 3 Instruct
LLAMA3 = (
    '{% set loop_messages = messages %}{% for message in loop_messages %}'
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n"
    '\n'
    "'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    '{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}'
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n"
    '\n'
    "' }}{% endif %}"
)

# Llama 3.1 Instruct: bos, a default system header with its dates, tools
LLAMA31 = (
    '{{- bos_token }}\n'
    '{%- if custom_tools is defined %}\n'
    '    {%- set tools = custom_tools %}\n'
    '{%- endif %}\n'
    '{%- if not tools_in_user_message is defined %}\n'
    '    {%- set tools_in_user_message = true %}\n'
    '{%- endif %}\n'
    '{%- if not date_string is defined %}\n'
    '    {%- set date_string = "26 Jul 2024" %}\n'
    '{%- endif %}\n'
    '{%- if not tools is defined %}\n'
    '    {%- set tools = none %}\n'
    '{%- endif %}\n'
    '\n'
    '{#- This block extracts the system message, so we can slot it into the right place. #}\n'
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    '    {%- set messages = messages[1:] %}\n'
    '{%- else %}\n'
    '    {%- set system_message = "" %}\n'
    '{%- endif %}\n'
    '\n'
    '{#- System message + builtin tools #}\n'
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    '{%- if builtin_tools is defined or tools is not none %}\n'
    '    {{- "Environment: ipython\\n" }}\n'
    '{%- endif %}\n'
    '{%- if builtin_tools is defined %}\n'
    '    {{- "Tools: " + builtin_tools | reject(\'equalto\', \'code_interpreter\') | join(", ") + "\\n\\n"}}\n'
    '{%- endif %}\n'
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    '{%- if tools is not none and not tools_in_user_message %}\n'
    '    '
    '{{- "You have access to the following functions. To call a function, please respond with JSON for a functi'
    'on call." }}\n'
    '    '
    '{{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its valu'
    "e}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    '    {%- for t in tools %}\n'
    '        {{- t | tojson(indent=4) }}\n'
    '        {{- "\\n\\n" }}\n'
    '    {%- endfor %}\n'
    '{%- endif %}\n'
    '{{- system_message }}\n'
    '{{- "<|eot_id|>" }}\n'
    '\n'
    '{#- Custom tools are passed in a user message with some extra guidance #}\n'
    '{%- if tools_in_user_message and not tools is none %}\n'
    '    {#- Extract the first user message so we can plug it in here #}\n'
    '    {%- if messages | length != 0 %}\n'
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    '        {%- set messages = messages[1:] %}\n'
    '    {%- else %}\n'
    '        '
    '{{- raise_exception("Cannot put tools in the first user message when there\'s no first user message!") }}'
    '\n'
    '{%- endif %}\n'
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
    '    '
    '{{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its valu'
    "e}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    '    {%- for t in tools %}\n'
    '        {{- t | tojson(indent=4) }}\n'
    '        {{- "\\n\\n" }}\n'
    '    {%- endfor %}\n'
    '    {{- first_user_message + "<|eot_id|>"}}\n'
    '{%- endif %}\n'
    '\n'
    '{%- for message in messages %}\n'
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    '        '
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eo"
    "t_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    '        {%- if not message.tool_calls|length == 1 %}\n'
    '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
    '        {%- endif %}\n'
    '        {%- set tool_call = message.tool_calls[0].function %}\n'
    '        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n'
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    '            {{- "<|python_tag|>" + tool_call.name + ".call(" }}\n'
    '            {%- for arg_name, arg_val in tool_call.arguments | items %}\n'
    '                {{- arg_name + \'="\' + arg_val + \'"\' }}\n'
    '                {%- if not loop.last %}\n'
    '                    {{- ", " }}\n'
    '                {%- endif %}\n'
    '                {%- endfor %}\n'
    '            {{- ")" }}\n'
    '        {%- else  %}\n'
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    '            {{- \'{"name": "\' + tool_call.name + \'", \' }}\n'
    '            {{- \'"parameters": \' }}\n'
    '            {{- tool_call.arguments | tojson }}\n'
    '            {{- "}" }}\n'
    '        {%- endif %}\n'
    '        {%- if builtin_tools is defined %}\n'
    "            {#- This means we're in ipython mode #}\n"
    '            {{- "<|eom_id|>" }}\n'
    '        {%- else %}\n'
    '            {{- "<|eot_id|>" }}\n'
    '        {%- endif %}\n'
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
    '        {%- if message.content is mapping or message.content is iterable %}\n'
    '            {{- message.content | tojson }}\n'
    '        {%- else %}\n'
    '            {{- message.content }}\n'
    '        {%- endif %}\n'
    '        {{- "<|eot_id|>" }}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '{%- if add_generation_prompt %}\n'
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    '{%- endif %}\n'
)

# Mistral Instruct v0.1 / v0.2: bos, alternating roles or raise_exception
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Mistral Instruct v0.3: the system message in the first user turn, tools, raise_exception
MISTRAL03 = (
    '{%- if messages[0]["role"] == "system" %}\n'
    '    {%- set system_message = messages[0]["content"] %}\n'
    '    {%- set loop_messages = messages[1:] %}\n'
    '{%- else %}\n'
    '    {%- set loop_messages = messages %}\n'
    '{%- endif %}\n'
    '{%- if not tools is defined %}\n'
    '    {%- set tools = none %}\n'
    '{%- endif %}\n'
    '{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}\n'
    '\n'
    '{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n'
    '{%- set ns = namespace() %}\n'
    '{%- set ns.index = 0 %}\n'
    '{%- for message in loop_messages %}\n'
    '    '
    '{%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and'
    ' message.tool_calls is not none)) %}\n'
    '        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}\n'
    '            '
    '{{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/u'
    'ser/assistant/...") }}\n'
    '        {%- endif %}\n'
    '        {%- set ns.index = ns.index + 1 %}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '\n'
    '{{- bos_token }}\n'
    '{%- for message in loop_messages %}\n'
    '    {%- if message["role"] == "user" %}\n'
    '        {%- if tools is not none and (message == user_messages[-1]) %}\n'
    '            {{- "[AVAILABLE_TOOLS] [" }}\n'
    '            {%- for tool in tools %}\n'
    '                {%- set tool = tool.function %}\n'
    '                {{- \'{"type": "function", "function": {\' }}\n'
    '                {%- for key, val in tool.items() if key != "return" %}\n'
    '                    {%- if val is string %}\n'
    '                        {{- \'"\' + key + \'": "\' + val + \'"\' }}\n'
    '                    {%- else %}\n'
    '                        {{- \'"\' + key + \'": \' + val|tojson }}\n'
    '                    {%- endif %}\n'
    '                    {%- if not loop.last %}\n'
    '                        {{- ", " }}\n'
    '                    {%- endif %}\n'
    '                {%- endfor %}\n'
    '                {{- "}}" }}\n'
    '                {%- if not loop.last %}\n'
    '                    {{- ", " }}\n'
    '                {%- else %}\n'
    '                    {{- "]" }}\n'
    '                {%- endif %}\n'
    '            {%- endfor %}\n'
    '            {{- "[/AVAILABLE_TOOLS]" }}\n'
    '            {%- endif %}\n'
    '        {%- if loop.first and system_message is defined %}\n'
    '            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}\n'
    '        {%- else %}\n'
    '            {{- "[INST] " + message["content"] + "[/INST]" }}\n'
    '        {%- endif %}\n'
    '    {%- elif message.tool_calls is defined and message.tool_calls is not none %}\n'
    '        {{- "[TOOL_CALLS] [" }}\n'
    '        {%- for tool_call in message.tool_calls %}\n'
    '            {%- set out = tool_call.function|tojson %}\n'
    '            {{- out[:-1] }}\n'
    '            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n'
    '                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
    '            {%- endif %}\n'
    '            {{- \', "id": "\' + tool_call.id + \'"}\' }}\n'
    '            {%- if not loop.last %}\n'
    '                {{- ", " }}\n'
    '            {%- else %}\n'
    '                {{- "]" + eos_token }}\n'
    '            {%- endif %}\n'
    '        {%- endfor %}\n'
    '    {%- elif message["role"] == "assistant" %}\n'
    '        {{- " " + message["content"]|trim + eos_token}}\n'
    '    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}\n'
    '        {%- if message.content is defined and message.content.content is defined %}\n'
    '            {%- set content = message.content.content %}\n'
    '        {%- else %}\n'
    '            {%- set content = message.content %}\n'
    '        {%- endif %}\n'
    '        {{- \'[TOOL_RESULTS] {"content": \' + content|string + ", " }}\n'
    '        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n'
    '            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
    '        {%- endif %}\n'
    '        {{- \'"call_id": "\' + message.tool_call_id + \'"}[/TOOL_RESULTS]\' }}\n'
    '    {%- else %}\n'
    '        '
    '{{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optiona'
    'l system message!") }}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
)

# Qwen2.5 Instruct: ChatML with a default system prompt
QWEN25 = (
    '{%- if tools %}\n'
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    '    {%- else %}\n'
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    '    {%- endif %}\n'
    '    '
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are pro'
    'vided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    '    {%- for tool in tools %}\n'
    '        {{- "\\n" }}\n'
    '        {{- tool | tojson }}\n'
    '    {%- endfor %}\n'
    '    '
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within'
    ' <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-js'
    'on-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    '{%- else %}\n'
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    '    {%- else %}\n'
    '        '
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\"
    "n' }}\n"
    '    {%- endif %}\n'
    '{%- endif %}\n'
    '{%- for message in messages %}\n'
    '    '
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assi'
    'stant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    '        {%- if message.content %}\n'
    "            {{- '\\n' + message.content }}\n"
    '        {%- endif %}\n'
    '        {%- for tool_call in message.tool_calls %}\n'
    '            {%- if tool_call.function is defined %}\n'
    '                {%- set tool_call = tool_call.function %}\n'
    '            {%- endif %}\n'
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    '            {{- tool_call.name }}\n'
    '            {{- \'", "arguments": \' }}\n'
    '            {{- tool_call.arguments | tojson }}\n'
    "            {{- '}\\n</tool_call>' }}\n"
    '        {%- endfor %}\n'
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    '        {%- endif %}\n'
    "        {{- '\\n<tool_response>\\n' }}\n"
    '        {{- message.content }}\n'
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    '        {%- endif %}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '{%- if add_generation_prompt %}\n'
    "    {{- '<|im_start|>assistant\\n' }}\n"
    '{%- endif %}\n'
)

# Gemma Instruct: bos, no system role (raise_exception)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n"
    "' + message['content'] | trim + '<end_of_turn>\n"
    "' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n"
    "'}}{% endif %}"
)

# Gemma 3 Instruct: content as a string or as a list of parts
GEMMA3 = (
    '{{ bos_token }}\n'
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    '    {%- else -%}\n'
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    '    {%- endif -%}\n'
    '    {%- set loop_messages = messages[1:] -%}\n'
    '{%- else -%}\n'
    '    {%- set first_user_prefix = "" -%}\n'
    '    {%- set loop_messages = messages -%}\n'
    '{%- endif -%}\n'
    '{%- for message in loop_messages -%}\n'
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    '    {%- endif -%}\n'
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    '    {%- else -%}\n'
    "        {%- set role = message['role'] -%}\n"
    '    {%- endif -%}\n'
    '    {{ \'<start_of_turn>\' + role + \'\\n\' + (first_user_prefix if loop.first else "") }}\n'
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    '            {%- endif -%}\n'
    '        {%- endfor -%}\n'
    '    {%- else -%}\n'
    '        {{ raise_exception("Invalid content type") }}\n'
    '    {%- endif -%}\n'
    "    {{ '<end_of_turn>\\n' }}\n"
    '{%- endfor -%}\n'
    '{%- if add_generation_prompt -%}\n'
    "    {{'<start_of_turn>model\\n'}}\n"
    '{%- endif -%}\n'
)

# Phi-3 mini Instruct: <|end|> ends a turn; add_generation_prompt or eos
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n"
    "' + message['content'] + '<|end|>\n"
    "'}}{% elif message['role'] == 'user' %}{{'<|user|>\n"
    "' + message['content'] + '<|end|>\n"
    "'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n"
    "' + message['content'] + '<|end|>\n"
    "'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n"
    "' }}{% else %}{{ eos_token }}{% endif %}"
)

# Zephyr beta: eos_token ends each turn
ZEPHYR = (
    '{% for message in messages %}\n'
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n"
    "' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n"
    "' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n"
    "'  + message['content'] + eos_token }}\n"
    '{% endif %}\n'
    '{% if loop.last and add_generation_prompt %}\n'
    "{{ '<|assistant|>' }}\n"
    '{% endif %}\n'
    '{% endfor %}'
)

# family: (template, the tokenizer's special tokens, bos, eos, the token that ends an assistant turn)
FAMILIES = {
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"),
    "llama3.1": (LLAMA31, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"], "<|begin_of_text|>", "<|eot_id|>",
                 "<|eot_id|>"),
    "mistral": (MISTRAL, ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", "</s>"),
    "mistral v0.3": (MISTRAL03, ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                                 "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"], "<s>", "</s>", "</s>"),
    "qwen2.5": (QWEN25, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|im_end|>"),
    "gemma": (GEMMA, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>",
              "<end_of_turn>"),
    "gemma3": (GEMMA3, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"], "<bos>",
               "<eos>", "<end_of_turn>"),
    "phi3": (PHI3, ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
             "<s>", "<|endoftext|>", "<|end|>"),
    "zephyr": (ZEPHYR, ["<unk>", "<s>", "</s>"], "<s>", "</s>", "</s>"),
}
TEXT = "Hello there, how are you? I am fine. système, naïve café, 日本語のテキスト 🙂 user assistant system model\n"

CHATS = {
    "one turn": [{"role": "user", "content": "Hello there"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}],
    "multi-turn": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How are you?"},
                   {"role": "user", "content": "fine"}],
    "system, multi-turn": [{"role": "system", "content": "Be nice"}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "?"}],
    "empty content": [{"role": "user", "content": ""}],
    "unicode": [{"role": "user", "content": "naïve café 日本語 🙂 \u200b"}],
    "blanks": [{"role": "user", "content": "  padded  \n"}],
    "special tokens in a message": [{"role": "user", "content": "say <|eot_id|>, <|im_end|> and </s>"}],
    "two user turns": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
}


def tokenizer_folder(path, family: str, *, eos: str | None = None):
    """A byte-level BPE tokenizer folder with the family's special tokens and chat template (the bos families' tokenizer
    puts bos first when asked for special tokens, as Llama 3's tokenizer.json does). eos: another eos_token."""
    template, specials, bos, own_eos, _ = FAMILIES[family]
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([TEXT] * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if bos:
        hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                          special_tokens=[(bos, hf.token_to_id(bos))])
    path.mkdir(parents=True)
    hf.save(str(path / "tokenizer.json"))
    added = {str(hf.token_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                      "normalized": False, "single_word": False} for t in specials}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, "bos_token": bos,
              "eos_token": eos or own_eos, "added_tokens_decoder": added, "clean_up_tokenization_spaces": False}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def hf_chat(hf, messages, *, tokenize: bool):
    out = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize)
    return out["input_ids"] if tokenize and not isinstance(out, list) else out


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_and_ids_equal_transformers(family, tmp_path):
    folder = tokenizer_folder(tmp_path / family, family)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ours = Tokenizer.load(folder)
    for name, messages in CHATS.items():
        try:
            want = hf_chat(hf, messages, tokenize=False)
        except Exception as e:  # the template refuses the conversation: so must ours, saying why
            with pytest.raises(ValueError, match=re.escape(f"chat template refused these messages: {e}")):
                render_chat(ours, messages)
            continue
        text = render_chat(ours, messages)
        assert text == want, name
        assert ours.encode(text) == hf_chat(hf, messages, tokenize=True), name


def test_content_parts_reach_a_template_as_transformers_passes_them(tmp_path):
    """A template that loops over a message's content parts (Gemma 3's: their texts joined with nothing between, a
    system message's first part only) gets them as transformers passes them; one that reads content as a string got
    the list itself, rendering its Python repr (as transformers does), and now gets the texts joined by newlines, as
    vLLM and the server do."""
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Now."}]},
             {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": " two"}]}]
    folder = tokenizer_folder(tmp_path / "gemma3", "gemma3")
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    want = hf_chat(hf, parts, tokenize=False)
    assert want == "<bos><start_of_turn>user\nBe brief.\n\npart onetwo<end_of_turn>\n<start_of_turn>model\n"
    assert render_chat(Tokenizer.load(folder), parts) == want

    folder = tokenizer_folder(tmp_path / "llama3", "llama3")
    joined = [{**m, "content": "\n".join(p["text"] for p in m["content"])} for m in parts]
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ours = Tokenizer.load(folder)
    assert render_chat(ours, parts) == hf_chat(hf, joined, tokenize=False)
    ours.chat_template = None  # the documented default: `role: content` lines
    assert render_chat(ours, parts) == "system: Be brief.\nNow.\nuser: part one\n two\nassistant:"


def test_a_template_looping_over_filtered_content_gets_the_parts(tmp_path):
    """Llama 3.2 Vision's template loops over `message['content'] | selectattr(...)`, joining the texts with nothing
    between (as transformers renders it): it was taken for one that reads content as a string, and the texts came
    joined by a newline."""
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'] is string %}{{ m['content'] }}{% else %}"
                "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %}"
                "{% endif %}<|eot|>{% endfor %}<|assistant|>")
    parts = [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": " two"}]}]
    ours = Tokenizer.train_char(["abc"])
    ours.chat_template = template
    ours.save(tmp_path)
    want = hf_chat(transformers.AutoTokenizer.from_pretrained(tmp_path), parts, tokenize=False)
    assert want == "<|user|>part one two<|eot|><|assistant|>"
    assert render_chat(ours, parts) == want


def model_folder(path, family: str, *, eos: str | None = None):
    """A tiny Llama with the family's tokenizer whose greedy reply to HELLO ends at the end-of-turn token after a few
    tokens: that token's output row is a multiple of the fourth reply token's (which then scores higher), and
    generation_config.json lists it among the eos ids (as Llama 3.1's and Phi-3's list theirs)."""
    folder = tokenizer_folder(path, family, eos=eos)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    end = hf_tok.convert_tokens_to_ids(FAMILIES[family][4])
    eos_ids = sorted({hf_tok.eos_token_id, end})
    config = transformers.LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=False, initializer_range=0.3, eos_token_id=eos_ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.tensor([hf_chat(hf_tok, HELLO, tokenize=True)])
    free = model.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)[0, -1]
    with torch.no_grad():
        model.lm_head.weight[end] = 3 * model.lm_head.weight[free]
    model.generation_config.update(eos_token_id=eos_ids, do_sample=False)
    model.save_pretrained(folder)
    reply = model.generate(ids, max_new_tokens=MAX_TOKENS, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert reply[-1] == end and len(reply) < MAX_TOKENS  # the set-up: the reply ends at the end-of-turn token
    return folder, reply


HELLO = [{"role": "user", "content": "Hello there 🙂"}]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """Llama 3.1 with <|end_of_text|> as the tokenizer's eos: its turns end with <|eot_id|>."""
    return model_folder(tmp_path_factory.mktemp("chat") / "llama", "llama3.1", eos="<|end_of_text|>")


def test_a_served_chat_reply_ends_at_the_end_of_turn_token_as_in_transformers(llama):
    folder, reply = llama
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    want = hf.decode(reply, skip_special_tokens=True)
    with serving(folder) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
        out = client.chat.completions.create(model="llama", messages=HELLO, max_tokens=MAX_TOKENS, temperature=0)
        assert (out.choices[0].message.content, out.choices[0].finish_reason) == (want, "stop")
        assert out.usage.prompt_tokens == len(hf_chat(hf, HELLO, tokenize=True))
        assert out.usage.completion_tokens == len(reply)  # the end-of-turn token counted, its text not returned
        chunks = list(client.chat.completions.create(model="llama", messages=HELLO, max_tokens=MAX_TOKENS,
                                                     temperature=0, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
        assert chunks[-1].choices[0].finish_reason == "stop"
        tokens = httpx.post(f"{srv.url}/tokenize", json={"messages": HELLO}, timeout=30).json()["tokens"]
        assert tokens == hf_chat(hf, HELLO, tokenize=True)


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("chat") / "gemma3", "gemma3")


def test_served_content_parts_and_a_refusal(gemma3):
    """Content parts reach Gemma 3's template as a list, as transformers passes them (it trims each part's text and
    joins them with nothing between): the server joined the texts by newlines whatever the template. The template's
    refusal is a 400 naming its reason, and the server goes on."""
    folder, _ = gemma3
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]}]
    with serving(folder) as srv:
        tokens = httpx.post(f"{srv.url}/tokenize", json={"messages": parts}, timeout=30).json()["tokens"]
        assert tokens == hf_chat(hf, parts, tokenize=True)
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
        out = client.chat.completions.create(model="gemma3", messages=parts, max_tokens=3, temperature=0)
        assert out.usage.prompt_tokens == len(tokens)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="gemma3", messages=[{"role": "user", "content": "a"}] * 2)
        assert e.value.status_code == 400 and e.value.body["param"] == "messages"
        assert e.value.body["message"] == ("the model's chat template refused these messages: Conversation roles "
                                           "must alternate user/assistant/user/assistant/...")
        assert_ok_after(srv.url)


def test_the_chat_command_ends_a_reply_at_the_end_of_turn_token(llama, monkeypatch, capsys):
    """`neurallayers chat` prints the reply transformers' generate gives, ended at <|eot_id|> (not the tokenizer's
    eos), without that token's text."""
    from neurallayers.__main__ import main

    folder, reply = llama
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    monkeypatch.setattr("sys.stdin", io.StringIO(HELLO[0]["content"] + "\n"))
    assert main(["chat", str(folder), "--temperature", "0", "--max-new-tokens", str(MAX_TOKENS)]) == 0
    assert capsys.readouterr().out == hf.decode(reply, skip_special_tokens=True).strip() + "\n"
