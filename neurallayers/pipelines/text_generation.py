"""text-generation: transformers' TextGenerationPipeline over generate(), chats included."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path
from typing import Any

from torch import nn

from neurallayers.checks import is_int
from neurallayers.data.tokenizers import Tokenizer, continuation_text
from neurallayers.embeddings import _check_texts, input_limit
from neurallayers.pipelines.base import Pipeline, _switch, log, unknown_option


class TextGenerationPipeline(Pipeline):
    """[{"generated_text": prompt + continuation}] per prompt; keyword arguments are GenerationConfig fields, plus
    transformers' `return_full_text` (False: the continuation alone), `do_sample` (False: greedy), `add_special_tokens`
    (for text prompts) and `pad_token_id` (accepted; padding is masked, so it changes nothing). The settings a call
    leaves unset come as transformers 5's pipeline layers them: the model folder's generation_config.json (sampling
    knobs, do_sample, max_new_tokens, max_length), then the pipeline's defaults (256 new tokens, sampling at
    temperature 0.7 with top_k 50), a (model, tokenizer) pair taking those alone.

    A chat (a list of {"role", "content"} messages), or a list of chats, is rendered with the tokenizer's chat
    template (else `role: content` lines, the reply ending at the next `user:` line, as `neurallayers chat`), as
    transformers' pipeline takes it: "generated_text" is then the messages with the assistant's reply appended, or
    the reply alone with return_full_text=False. A chat that ends with the assistant's message is continued, as
    transformers' pipeline does (`continue_final_message`; None: whether the last message is the assistant's): the
    prompt ends with that message's content and the full text extends it instead of adding a reply. A chat's `tools`,
    `documents` and `tokenizer_encode_kwargs` (`chat_template`: a template name or Jinja text; other keys are template
    variables) reach the template as transformers' pipeline passes them to apply_chat_template.

    transformers' length options too: `max_length` (prompt and new tokens together, per prompt; max_new_tokens wins
    over it), `prefix` (a text put before each prompt to generate from, left out of the result) and
    `handle_long_generation="hole"` (a prompt too long to leave room for the new tokens loses its oldest ones).
    `return_tensors=True` gives [{"generated_token_ids": prompt ids + new ids}] instead of text (the eos that ended a
    sequence included, as transformers' ids; a stop string's tokens are not), `clean_up_tokenization_spaces` decodes
    the new text with or without transformers' space clean-up (ignored for a BPE tokenizer, as transformers 5 does)."""

    task = "text-generation"

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, batch_size: int = 32) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size)
        if not self.config.causal:
            raise ValueError("text-generation needs a causal decoder model (config.causal=True), got an encoder")
        self.folder_generation: dict = {}  # folder_generation() of the model's folder; pipeline() sets it

    def _settings(self, gen_kwargs: dict, do_sample: bool | None, max_length: int | None) -> tuple[dict, int | None]:
        """GenerationConfig fields and the max_length that sets each prompt's new tokens (None: max_new_tokens does),
        layered as transformers 5's pipeline does: the call's options, over the folder's generation_config.json, over
        the pipeline's defaults (max_new_tokens 256, unless a max_length is set; do_sample with temperature 0.7), over
        generate()'s (top_k 50 when sampling). Beam search takes no sampling knob (beam sampling is not built here),
        contrastive search only the folder's top_k."""
        from neurallayers.interop.hf import defaults_for_method

        folder = self.folder_generation
        beams, alpha = gen_kwargs.get("num_beams", 1), gen_kwargs.get("penalty_alpha", 0.0)
        beams = beams if is_int(beams) else 1
        if do_sample is None and gen_kwargs.get("temperature") == 0:  # temperature 0 is greedy here
            do_sample = False
        if do_sample is True and gen_kwargs.get("temperature", 1.0) == 0:  # transformers refuses it too
            raise ValueError("do_sample=True with temperature=0: sampling needs a temperature > 0 (or do_sample=False)")
        if do_sample is True and beams > 1:
            raise ValueError(f"do_sample=True with num_beams={beams}: beam sampling is not built here; give "
                             "do_sample=False for beam search")
        sampling = beams == 1 and (do_sample if do_sample is not None else folder.get("do_sample", True))
        settings = dict(_SAMPLING_DEFAULTS) if sampling and not alpha else {}
        knobs = defaults_for_method(folder.get("sampling", {}), num_beams=beams,
                                    penalty_alpha=alpha if isinstance(alpha, int | float) else 0.0)
        if knobs.get("temperature") == 0:  # a greedy file's temperature is do_sample's business
            del knobs["temperature"]
        settings.update(knobs)
        settings.update(gen_kwargs)
        if not sampling and beams == 1:  # greedy whatever temperature is given, as transformers' do_sample=False
            settings["temperature"] = 0.0
        new = gen_kwargs.get("max_new_tokens", folder.get("max_new_tokens"))
        length = None if new is not None else max_length if max_length is not None else folder.get("max_length")
        # max_length decides per prompt (see _budget); the config still needs a valid count meanwhile
        settings["max_new_tokens"] = new if new is not None else length if length is not None else _MAX_NEW_TOKENS
        return settings, length

    @classmethod
    def check_defaults(cls, options: dict[str, Any]) -> None:
        own = {p.name for p in inspect.signature(cls._run).parameters.values() if p.kind is p.KEYWORD_ONLY}
        _check_generation_options({k: v for k, v in options.items() if k not in own})

    def _call(self, inputs: Any, kwargs: dict[str, Any], given: dict[str, Any]) -> Any:
        if _is_chat(inputs):  # one conversation: a list of messages, not a list of inputs
            return super()._call([inputs], kwargs, given)[0]
        return super()._call(inputs, kwargs, given)

    def _run(self, items: list, *, return_full_text: bool | None = None, continue_final_message: bool | None = None,
             prefix: str = "", handle_long_generation: str | None = None, max_length: int | None = None,
             return_tensors: bool | None = None, return_text: bool | None = None,
             clean_up_tokenization_spaces: bool | None = None, tools: list[dict] | None = None,
             documents: list[dict] | None = None, tokenizer_encode_kwargs: dict | None = None,
             do_sample: bool | None = None, add_special_tokens: bool | None = None, pad_token_id: int | None = None,
             **gen_kwargs: Any) -> list[list[dict]]:
        from neurallayers.generation.config import GenerationConfig

        chats = [item for item in items if _is_chat(item)]
        if chats and len(chats) < len(items):
            raise ValueError("inputs: give prompts (strings) or chats (lists of role/content messages), not both")
        continue_final_message = _switch("continue_final_message", continue_final_message)
        # per chat, as transformers decides it: a chat ending with the assistant's message is a prefill to continue
        continued = [m[-1]["role"] == "assistant" if continue_final_message is None else continue_final_message
                     for m in chats]
        _check_generation_options(gen_kwargs)
        if not isinstance(prefix, str):
            raise ValueError(f"prefix={prefix!r}: must be a string (prepended to each text prompt, not returned)")
        if handle_long_generation not in (None, "hole"):
            raise ValueError(f"handle_long_generation={handle_long_generation!r}: must be None or 'hole' (drop the "
                             "prompt's oldest tokens to leave room for the new ones)")
        if max_length is not None and (not is_int(max_length) or max_length < 1):
            raise ValueError(f"max_length={max_length!r}: must be an int >= 1 (prompt and new tokens together)")
        if max_length is not None and "max_new_tokens" in gen_kwargs:  # transformers' generate warns the same
            log.warning("text-generation: both max_new_tokens and max_length given; max_new_tokens wins")
        # a blank prompt is one, as in transformers' pipeline and `neurallayers generate` ("\n" starts a fresh line)
        texts = None if chats else _check_texts(items, "inputs", empty_ok=True)
        # token ids, as transformers' pipeline encodes them (a Llama tokenizer's bos first, as generate() adds it): the
        # prefix is generated from, never returned
        template = _template_options(bool(chats), tools, documents, tokenizer_encode_kwargs)
        # transformers passes add_special_tokens to the tokenizer for text prompts only (a template writes its own)
        special = _switch("add_special_tokens", add_special_tokens) is not False
        _check_pad_token_id(pad_token_id, self.config.vocab_size)
        prompts = (self._chat_prompts(chats, continued, template) if chats
                   else [self._start(i, prefix + t, special) for i, t in enumerate(texts)])
        do_sample = _switch("do_sample", do_sample)
        tensors = _return_tensors(return_full_text, return_tensors, return_text)
        return_full_text = _switch("return_full_text", return_full_text) is not False  # None: the default, as there
        clean_up = _switch("clean_up_tokenization_spaces", clean_up_tokenization_spaces)
        if do_sample is False:  # transformers' switch for greedy decoding
            gen_kwargs["temperature"] = 0.0
        settings, max_length = self._settings(gen_kwargs, do_sample, max_length)
        gen_config = GenerationConfig.from_dict(settings)
        n = gen_config.num_return_sequences
        if n > 1 and gen_config.num_beams == 1 and (gen_config.greedy or gen_config.penalty_alpha > 0):
            # every sequence would be the same one; transformers' generate refuses it too
            raise ValueError(f"num_return_sequences={n} with greedy decoding (do_sample=False or temperature=0, or "
                             f"contrastive search): the sequences would all be the same; sample, or give num_beams "
                             f">= {n}")
        templated = bool(chats) and self._templated(template)
        if chats and not templated:
            from neurallayers.data.chat import DEFAULT_STOP

            gen_config = gen_config.replace(stop=[*gen_config.stop, DEFAULT_STOP])
        # transformers counts the prefix's tokens as its tokenizer call encodes them (add_special_tokens only if given)
        extra = (len(self.tokenizer.encode(prefix, add_special_tokens=add_special_tokens is True))
                 if prefix and not chats else 0)
        budgets = [self._budget(i, len(ids), gen_config, max_length, extra) for i, ids in enumerate(prompts)]
        if handle_long_generation == "hole":
            prompts = [self._hole(i, ids, new) for i, (ids, new) in enumerate(zip(prompts, budgets, strict=True))]
        outs = self._generate(prompts, gen_config, budgets, clean_up)  # prompt-major, n per prompt
        if tensors:  # transformers' generated_token_ids: the prompt's ids (prefix, bos) and the new ones, eos included
            return [[{"generated_token_ids": prompts[i] + g.token_ids + _end_token(g)}
                     for g in outs[i * n:(i + 1) * n]] for i in range(len(prompts))]
        if chats:  # the default template's "assistant:" cue leaves a new reply a leading blank (`chat` drops it too)
            replies = [g.text if templated or continued[k // n] else g.text.lstrip() for k, g in enumerate(outs)]
            return [[{"generated_text": _full_chat(chat, r, continued[i]) if return_full_text else r}
                     for r in replies[i * n:(i + 1) * n]] for i, chat in enumerate(chats)]
        return [[{"generated_text": (text + g.text) if return_full_text else g.text} for g in outs[i * n:(i + 1) * n]]
                for i, text in enumerate(texts)]

    def _start(self, i: int, text: str, special: bool = True) -> list[int]:
        """The ids a text prompt starts from: its tokens, or for one that has none (""), the bos token alone, from
        which transformers' pipeline generates unconditionally (GPT-2's <|endoftext|>)."""
        ids = self.tokenizer.encode(text, add_special_tokens=special)
        if ids:
            return ids
        if self.tokenizer.bos_id is None:
            raise ValueError(f"inputs[{i}] is empty, and the tokenizer has no bos token to start from: give some text")
        return [self.tokenizer.bos_id]

    def _budget(self, i: int, prompt_len: int, config: Any, max_length: int | None, prefix_len: int) -> int:
        """New tokens for prompt i: max_new_tokens, or what transformers' max_length (a total of prompt and new
        tokens, the prefix not counted) leaves after the prompt."""
        if max_length is None:
            return config.max_new_tokens
        new = max_length + prefix_len - prompt_len
        if new < 1:
            raise ValueError(f"max_length={max_length}: inputs[{i}] already has {prompt_len - prefix_len} tokens, "
                             "leaving no room for new ones; raise it or give max_new_tokens")
        return new

    def _hole(self, i: int, ids: list[int], new_tokens: int) -> list[int]:
        """transformers' handle_long_generation="hole": a prompt that leaves no room for new_tokens in the context
        loses its oldest tokens."""
        limit = input_limit(self.tokenizer, self.config.block_size)
        if len(ids) + new_tokens <= limit:
            return ids
        keep = limit - new_tokens
        if keep <= 0:
            raise ValueError(f"handle_long_generation='hole': {new_tokens} new tokens fill the whole context of "
                             f"{limit} tokens, leaving none of inputs[{i}]; ask for fewer")
        return ids[-keep:]

    def _generate(self, prompts: list[list[int]], config: Any, budgets: list[int], clean_up: bool | None) -> list:
        """generate() on each group of prompts with the same budget of new tokens, results in input order (each
        prompt generates as it would alone, so grouping changes no token). clean_up: transformers'
        clean_up_tokenization_spaces for the new text (None: the tokenizer's own setting)."""
        tokenizer = self.tokenizer
        if clean_up is not None and clean_up != tokenizer.clean_up_tokenization_spaces:
            tokenizer = copy.copy(tokenizer)  # decodes (and finds stop strings in) the text as asked
            tokenizer.clean_up_tokenization_spaces = clean_up
        if clean_up and not tokenizer.cleans_up_spaces:  # transformers 5 ignores it too, with this warning
            log.warning("text-generation: clean_up_tokenization_spaces=True is ignored for a BPE tokenizer (it would "
                        "strip the spaces before punctuation that BPE text really has)")

        outs = [None] * (len(prompts) * config.num_return_sequences)
        for budget in dict.fromkeys(budgets):
            group = [i for i, b in enumerate(budgets) if b == budget]
            for start in range(0, len(group), self.batch_size):  # batch_size prompts per generate() call, at most
                self._generate_group(group[start:start + self.batch_size], prompts,
                                     config.replace(max_new_tokens=budget), tokenizer, outs)
        return outs

    def _generate_group(self, idx: list[int], prompts: list[list[int]], config: Any, tokenizer: Tokenizer,
                        outs: list) -> None:
        """generate() on prompts[idx], the results put at their places in `outs` (n per prompt)."""
        from neurallayers.generation.generate import generate

        n = config.num_return_sequences
        gens = generate(self.model, tokenizer, [prompts[i] for i in idx], config)
        for j, i in enumerate(idx):
            outs[i * n:(i + 1) * n] = gens[j * n:(j + 1) * n]
            for g in outs[i * n:(i + 1) * n]:
                if isinstance(g.stopped_by, int):  # transformers' text holds it, unless it is a special token
                    g.text = continuation_text(tokenizer, prompts[i], [*g.token_ids, g.stopped_by],
                                               skip_padded_ids=True)

    def _chat_prompts(self, chats: list[list[dict]], continued: list[bool], template: dict) -> list[list[int]]:
        """Token ids of each rendered chat (ending with the reply's cue, or with its final message's content where it
        is `continued`): encoded without the tokenizer's own bos, which a template writes itself (as `neurallayers
        chat` and the server encode them; a Llama 3 prompt got two). `template`: render_chat's template options."""
        from neurallayers.data.chat import render_chat

        return [self.tokenizer.encode(render_chat(self.tokenizer, chat, add_generation_prompt=not cont,
                                                  continue_final_message=cont, **template))
                for chat, cont in zip(chats, continued, strict=True)]

    def _templated(self, template: dict) -> bool:
        """Whether the chats render through a Jinja template (else the plain lines, whose reply ends at `user:`)."""
        from neurallayers.data.chat import resolve_chat_template

        return resolve_chat_template(self.tokenizer, template.get("chat_template"),
                                     tools=template.get("tools")) is not None


# transformers 5's text-generation pipeline defaults (its _default_generation_config), and generate()'s top_k when
# sampling; a folder's generation_config.json and the call's options come over them
_MAX_NEW_TOKENS = 256
_SAMPLING_DEFAULTS = {"temperature": 0.7, "top_k": 50}


def folder_generation(folder: Path) -> dict:
    """What a model folder's generation_config.json sets for the pipeline: "sampling" (its knobs, as
    generation_defaults(sampling=True) reads them), and "do_sample", "max_new_tokens", "max_length" where it sets
    them. A value of the wrong kind is left out with a warning, as generation_defaults leaves one out."""
    from neurallayers.interop.hf import generation_defaults, read_json

    path = folder / "generation_config.json"
    if not path.is_file():
        return {}
    out: dict = {"sampling": generation_defaults(folder, sampling=True)}
    settings = read_json(path)
    for name, ok, what in (("do_sample", lambda v: isinstance(v, bool), "must be true or false"),
                           ("max_new_tokens", lambda v: is_int(v) and v >= 1, "must be an integer >= 1"),
                           ("max_length", lambda v: is_int(v) and v >= 1, "must be an integer >= 1")):
        value = settings.get(name)
        if value is None:
            continue
        if ok(value):
            out[name] = value
        else:
            log.warning("%s: %s=%r is not used (%s)", path, name, value, what)
    return out


def _check_pad_token_id(pad_token_id: Any, vocab_size: int) -> None:
    """transformers' pad_token_id: an id of the vocabulary. Prompts are padded under a mask here, so which id pads
    changes no token."""
    if pad_token_id is not None and (not is_int(pad_token_id) or not 0 <= pad_token_id < vocab_size):
        raise ValueError(f"pad_token_id={pad_token_id!r}: must be a token id in [0, {vocab_size})")


def _end_token(gen: Any) -> list[int]:
    """[the token that ended `gen`] (any of several eos ids, or a stop_token_id), which transformers keeps at the end of
    its ids; [] where it ran to its length or a stop string ended it (its tokens are trimmed, as from the text)."""
    return [gen.stopped_by] if isinstance(gen.stopped_by, int) else []


def _return_tensors(return_full_text: Any, return_tensors: Any, return_text: Any) -> bool:
    """Whether results are token ids (transformers' return_tensors=True) rather than text; the three switches are
    mutually exclusive there too (return_text=True is the default, text)."""
    given = [name for name, value in (("return_full_text", return_full_text), ("return_tensors", return_tensors),
                                      ("return_text", return_text)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"{given[0]} and {given[1]}: give one of return_full_text, return_tensors and return_text")
    if _switch("return_text", return_text) is False:  # transformers returns the text anyway; nothing else to give
        raise ValueError("return_text=False: give return_tensors=True for token ids instead of text")
    return _switch("return_tensors", return_tensors) is True


def _full_chat(chat: list[dict], reply: str, continued: bool) -> list[dict]:
    """transformers' full text of a chat: the reply as a new assistant message, or, continuing the final message,
    appended to its content (a list of parts: to its last text part, the one the prompt ends with)."""
    if not continued:
        return [*chat, {"role": "assistant", "content": reply}]
    from neurallayers.data.chat import extend_content

    content, _ = extend_content(chat[-1]["content"], reply)  # render_chat continued that text: it has one
    return [*chat[:-1], {"role": chat[-1]["role"], "content": content}]


def _is_chat(item: Any) -> bool:
    """A conversation: a non-empty list of message dicts with a role (transformers' pipeline's test too)."""
    return isinstance(item, list | tuple) and bool(item) and all(isinstance(m, dict) and "role" in m for m in item)


# apply_chat_template's own arguments that tokenizer_encode_kwargs could pass, which this pipeline sets itself
_ENCODING_KWARGS = ("tokenize", "return_dict", "return_tensors", "padding", "truncation", "max_length",
                    "add_generation_prompt", "continue_final_message", "tools", "documents")


def _template_options(chats: bool, tools: Any, documents: Any, encode_kwargs: Any) -> dict:
    """render_chat's options from transformers' pipeline arguments: `tools` and `documents` (chats only, as
    transformers passes them to apply_chat_template) and `tokenizer_encode_kwargs` (its `chat_template`, and extra
    template variables such as Qwen3's enable_thinking, which apply_chat_template hands to the template)."""
    given = [name for name, v in (("tools", tools), ("documents", documents),
                                  ("tokenizer_encode_kwargs", encode_kwargs)) if v is not None]
    if not chats:
        if given:  # transformers passes them to a chat's template only
            raise ValueError(f"text-generation: {given[0]} applies to chats (lists of role/content messages), not to "
                             "text prompts")
        return {}
    extra = dict(encode_kwargs or {})
    if not isinstance(encode_kwargs, dict | None):
        raise ValueError(f"tokenizer_encode_kwargs={encode_kwargs!r:.60}: must be a dict")
    if taken := [k for k in extra if k in _ENCODING_KWARGS]:
        raise ValueError(f"tokenizer_encode_kwargs: {taken[0]!r} is set by the pipeline (give tools and documents "
                         "as the pipeline's own arguments)")
    chat_template = extra.pop("chat_template", None)
    return {"tools": tools, "documents": documents, "chat_template": chat_template, "template_kwargs": extra or None}


# transformers' generate() options not taken here, and what to give instead
_INSTEAD = {
    "stop_sequence": "give stop=[...] instead (generation ends before the stop string, which is not included, as in "
                     "`neurallayers generate` and the server)",
    "eos_token_id": "give stop_token_ids=[...] instead (ids that end a generation, beside the tokenizer's eos)",
    "min_length": "give min_new_tokens instead (it counts the new tokens only; min_length counts the prompt's too)",
    "generation_config": "give its settings as options instead (GenerationConfig's fields)",
}


def _check_generation_options(gen_kwargs: dict) -> None:
    """An option that is neither a GenerationConfig field nor one of the pipeline's own (the keywords of
    TextGenerationPipeline._run), named with the valid ones: `return_fulltext=False` was "GenerationConfig has no
    field 'return_fulltext'", with no hint of return_full_text."""
    from neurallayers.generation.config import GenerationConfig

    fields = [f.name for f in dataclasses.fields(GenerationConfig)]
    own = [p.name for p in inspect.signature(TextGenerationPipeline._run).parameters.values()
           if p.kind is p.KEYWORD_ONLY]
    for name in gen_kwargs:
        if name in _INSTEAD:
            raise ValueError(f"{name}: {_INSTEAD[name]}")
        if name not in fields:
            raise unknown_option("text-generation", name, own + fields,
                                 f"{', '.join(own)} and GenerationConfig's fields ({', '.join(fields)})")
