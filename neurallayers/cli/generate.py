"""`neurallayers generate`: text from a run directory or Hugging Face folder, printed or streamed."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import re
import sys

from neurallayers.cli.common import add_device_dtype, add_model_path, load_model, non_empty


def add_sampling_arguments(parser: argparse.ArgumentParser, *, search: bool = True, seed: int | None = None,
                           seed_help: str = "sampling seed: the same seed, settings and prompt give the same text "
                           "(unset: new draws)") -> None:
    """The GenerationConfig knobs, shared by generate, batch and chat; `search=False` leaves out beam and contrastive
    search, which a streamed chat reply cannot use (its --help listed flags that were always refused); `seed` and
    `seed_help`: the seed's default and help (batch seeds every line by default)."""
    g = parser.add_argument_group("decoding (temperature 0 = greedy)")
    g.add_argument("--max-new-tokens", type=int, default=200, help="(default 200)")
    g.add_argument("--min-new-tokens", type=int, default=0, help="end-of-text is blocked until this many")
    searches = "; 0 with --num-beams or --penalty-alpha, which are deterministic" if search else ""
    g.add_argument("--temperature", type=float, default=None, help=f"default 0.8 (or the model's, below){searches}")
    g.add_argument("--top-k", type=int, default=None, help="0 = off (the default)")
    g.add_argument("--top-p", type=float, default=None, help="1 = off (the default)")
    g.add_argument("--min-p", type=float, default=None, help="0 = off (the default)")
    g.add_argument("--repetition-penalty", type=float, default=None,
                   help="1 = off (the default). A Hugging Face folder's generation_config.json may recommend its own "
                   "temperature, top-k, top-p, min-p and repetition penalty: used for those of the five not given")
    g.add_argument("--presence-penalty", type=float, default=0.0,
                   help="-2 to 2, subtracted once from every token already generated (OpenAI's; 0 = off)")
    g.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="-2 to 2, subtracted per earlier occurrence in the generated text (OpenAI's; 0 = off)")
    g.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="ban any n-gram of this size from occurring twice (prompt included; 0 = off)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not included in the text")
    g.add_argument("--seed", type=int, default=seed, help=seed_help)
    if search:
        g.add_argument("--num-beams", type=int, default=1, help="beam search when > 1")
        g.add_argument("--length-penalty", type=float, default=1.0,
                       help="beam search: a beam's score is its log-probability over its length to this power (> 0 "
                       "favours longer outputs, as in transformers)")
        g.add_argument("--penalty-alpha", type=float, default=0.0,
                       help="contrastive search when > 0 (with --top-k > 1)")
    g.add_argument("--ignore-eos", action="store_true",
                   help="go on past the end-of-text token (it is generated as any other token) to --max-new-tokens")
    g.add_argument("--stop-token-id", type=int, action="append", default=[], dest="stop_token_ids",
                   help="a token id that ends the output (repeatable)")
    g.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS",
                   help="add BIAS to token ID's logit (repeatable; -100 bans it)")
    if search:
        g.add_argument("--early-stopping", choices=["false", "true", "never"], default="false",
                       help="beam search: when to stop (Hugging Face semantics)")
        return
    parser.set_defaults(num_beams=1, length_penalty=1.0, penalty_alpha=0.0, early_stopping="false")


def generation_config(args: argparse.Namespace):
    from neurallayers.generation import GenerationConfig

    searching = args.num_beams > 1 or args.penalty_alpha > 0
    temperature = args.temperature
    if temperature is None:
        temperature = 0.0 if searching else 0.8
    contrasting = getattr(args, "amateur", None) is not None
    unused = _unused_sampling_flags(args) if searching or contrasting else []
    if unused:
        flags = unused[0] if len(unused) == 1 else f"{', '.join(unused[:-1])} and {unused[-1]}"
        why = ("contrastive decoding (--amateur) chooses by its own score" if contrasting
               else "beam search and contrastive search are deterministic")
        print(f"note: {why}: {flags} {'is' if len(unused) == 1 else 'are'} not used", file=sys.stderr)
    with flag_names():
        config = GenerationConfig(
            max_new_tokens=args.max_new_tokens, temperature=temperature, top_k=_given(args.top_k, 0),
            top_p=_given(args.top_p, 1.0), min_p=_given(args.min_p, 0.0),
            repetition_penalty=_given(args.repetition_penalty, 1.0), presence_penalty=args.presence_penalty,
            frequency_penalty=args.frequency_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size, stop=args.stop,
            seed=args.seed, num_beams=args.num_beams, length_penalty=args.length_penalty,
            penalty_alpha=args.penalty_alpha, ignore_eos=args.ignore_eos, min_new_tokens=args.min_new_tokens,
            num_return_sequences=getattr(args, "num_return_sequences", 1), stop_token_ids=args.stop_token_ids,
            logit_bias=_logit_bias(args.logit_bias),  # and generate's own flags (--amateur, --draft), unset elsewhere
            contrastive_alpha=_given(getattr(args, "contrastive_alpha", None), 0.1),
            num_speculative_tokens=_given(getattr(args, "num_speculative_tokens", None), 4),
            early_stopping={"false": False, "true": True, "never": "never"}[args.early_stopping])
    _check_beam_flags(args)
    return config


def _check_beam_flags(args: argparse.Namespace) -> None:
    """--length-penalty and --early-stopping tune beam search: without --num-beams > 1 they did nothing, silently, as
    --num-speculative-tokens without --draft did."""
    given = [flag for flag, on in (("--length-penalty", args.length_penalty != 1.0),
                                   ("--early-stopping", args.early_stopping != "false")) if on]
    if given and args.num_beams <= 1:
        them = "them" if len(given) > 1 else "it"
        raise ValueError(f"{' and '.join(given)} {'tune' if len(given) > 1 else 'tunes'} beam search, which is not on: "
                         f"add --num-beams N (N > 1) or leave {them} out")


@contextlib.contextmanager
def flag_names(*, bounds: bool = True):
    """GenerationConfig's errors in the words of the command line: "--top-p 2.0: must be in (0, 1]", not
    "GenerationConfig.top_p=2.0: ..." (a field name the user never typed). `bounds=False`: a bare field name is not
    the command line's (batch: a JSONL line's field, named as the line writes it)."""
    try:
        yield
    except ValueError as e:
        message = str(e)
        named = re.sub(r"GenerationConfig\.(\w+)(=?)", _as_flag, message)
        if named == message:
            raise
        if bounds:  # the bound another field sets: "must be <= num_beams=2", "in [0, max_new_tokens=5]"
            named = re.sub(r"\b(num_beams|max_new_tokens)(=)", _as_flag, named)
        raise ValueError(named) from None


def check_vocab(config, model) -> None:
    """--stop-token-id and --logit-bias ids the model's vocabulary has, refused by their flags' names."""
    with flag_names():
        config.check_vocab(model.config.vocab_size)


# GenerationConfig fields whose flag is not the field's name with dashes
_FLAGS = {"stop_token_ids": "--stop-token-id"}


def _as_flag(match: re.Match) -> str:
    flag = _FLAGS.get(match[1], "--" + match[1].replace("_", "-"))
    return f"{flag} " if match[2] else flag


def _unused_sampling_flags(args: argparse.Namespace) -> list[str]:
    """The sampling flags given that a search does not use: all of them in beam search, all but --top-k (its
    candidate count) in contrastive search, all but --temperature (which scales its score) in contrastive decoding.
    The note named only a --temperature, so --top-p 0.5 went unused silently."""
    flags = {"--temperature": (args.temperature, (None, 0)), "--top-k": (args.top_k, (None, 0)),
             "--top-p": (args.top_p, (None, 1)), "--min-p": (args.min_p, (None, 0))}
    if getattr(args, "amateur", None) is not None:
        del flags["--temperature"]
    elif args.num_beams <= 1:  # contrastive search
        del flags["--top-k"]
    return [flag for flag, (value, off) in flags.items() if value not in off]


def _given(value, default):
    return default if value is None else value


def use_model_defaults(args: argparse.Namespace, path: str) -> None:
    """Sets each sampling knob the command line left unset to what the model folder recommends
    (api.generation_defaults: its generation_config.json), and says so on stderr. Beam search takes none (it is
    deterministic), contrastive search only top_k (its candidate count, as transformers takes it)."""
    from neurallayers.api import generation_defaults
    from neurallayers.interop.hf import defaults_for_method

    usable = defaults_for_method(generation_defaults(path), num_beams=args.num_beams, penalty_alpha=args.penalty_alpha)
    if getattr(args, "amateur", None) is not None:  # contrastive decoding has no top-k, top-p or min-p
        usable = {k: v for k, v in usable.items() if k in ("temperature", "repetition_penalty")}
    chosen = {k: v for k, v in usable.items() if getattr(args, k) is None}
    if chosen:
        print("note: the model's generation_config.json sets " + ", ".join(f"{k}={v}" for k, v in chosen.items()),
              file=sys.stderr)
    for key, value in chosen.items():
        setattr(args, key, value)


def _logit_bias(pairs: list[str]) -> dict[int, float]:
    bias = {}
    for pair in pairs:
        key, _, value = pair.partition("=")  # no "=": value "" fails float() below
        try:
            bias[int(key)] = float(value)
        except ValueError:
            raise ValueError(f"--logit-bias {pair!r}: expected ID=BIAS, e.g. 50256=-100") from None
    return bias


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_path(parser)
    parser.add_argument("prompts", nargs="*", help="prompt(s); none reads one prompt from stdin")
    parser.add_argument("--stream", action="store_true", help="print tokens as they come (one prompt)")
    parser.add_argument("--draft", type=non_empty,
                        help="a smaller model (run dir / HF folder) for speculative decoding")
    parser.add_argument("--amateur", type=non_empty,
                        help="a weaker model (run dir / HF folder) for contrastive decoding: tokens the "
                        "model likes much more than the amateur does")
    parser.add_argument("--contrastive-alpha", type=float, default=None,
                        help="--amateur: keep tokens with at least this fraction of the top token's probability "
                        "(default 0.1)")
    parser.add_argument("--num-speculative-tokens", type=int, default=None,
                        help="--draft: tokens proposed per round (default 4)")
    parser.add_argument("--num-return-sequences", type=int, default=1, help="samples (or beams) per prompt")
    parser.add_argument("--compile", action="store_true",
                        help="compile the one-token decode step (neurallayers.generation.fast): 15-60 s to start, "
                        "then 1.5-3x the tokens/s on CPU; pays off for long outputs (greedy and sampling)")
    add_device_dtype(parser, compiles=True)
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from neurallayers.generation import generate, stream

    _check_method_flags(args)
    use_model_defaults(args, args.path)
    config = generation_config(args)
    _check_contrastive_candidates(config)
    if not args.prompts and sys.stdin.isatty():  # a forgotten prompt: the command sat waiting without a word
        print("neurallayers generate: no prompt given: type one and end it with Ctrl-D on a line of its own (or give "
              "it as an argument, or pipe it in)", file=sys.stderr, flush=True)
    prompts = args.prompts or [sys.stdin.read()]
    if any(not p for p in prompts):
        raise ValueError("empty prompt; give some text (a single newline is fine: $'\\n')")
    model, tokenizer = load_model(args.path, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    check_vocab(config, model)
    draft = _helper_model("draft", args, tokenizer) if args.draft else None
    amateur = _helper_model("amateur", args, tokenizer) if args.amateur else None
    if args.compile:
        if config.num_beams > 1 or config.penalty_alpha > 0 or draft is not None or amateur is not None:
            raise ValueError("--compile speeds up greedy and sampled decoding; beam search, contrastive search, "
                             "--draft and --amateur run their own steps")
        from neurallayers.generation.fast import prepare_for_decode

        prepare_for_decode(model)
        # the first step compiles: without a line the command sat silent for up to a minute (more on a busy machine)
        print("neurallayers generate: the first token compiles the decode step (15-60 s; a later run reads torch's "
              "cache)", file=sys.stderr, flush=True)
    if args.stream:
        if len(prompts) != 1 or draft is not None or amateur is not None:
            raise ValueError("--stream takes exactly one prompt and no --draft or --amateur")
        if config.num_beams > 1 or config.penalty_alpha > 0 or config.num_return_sequences > 1:
            raise ValueError("--stream prints one greedy or sampled sequence: no --num-beams, --penalty-alpha or "
                             "--num-return-sequences")
        events = stream(model, tokenizer, prompts[0], config)  # checks the request: a refused prompt prints nothing
        first = next(events)
        sys.stdout.write(prompts[0])
        count, reason = 0, None
        for event in itertools.chain([first], events):
            sys.stdout.write(event.text)
            sys.stdout.flush()
            count += event.token_id is not None
            reason = event.finish_reason or reason
        sys.stdout.write("\n")
        _note_context_full([(reason, count)], config.max_new_tokens, model.config.block_size)
        return 0
    gens = generate(model, tokenizer, prompts, config, draft_model=draft, amateur_model=amateur)
    for i, gen in enumerate(gens):
        prompt = prompts[i // config.num_return_sequences]
        if len(gens) > 1:
            print(f"----- sample {i + 1} ({gen.finish_reason}, {len(gen.token_ids)} tokens) -----")
        print(prompt + gen.text)
    whose, block = "the model's", model.config.block_size
    if amateur is not None and amateur.config.block_size < block:  # it scores every step: its context ends them
        whose, block = "the amateur's", amateur.config.block_size
    _note_context_full([(g.finish_reason, len(g.token_ids)) for g in gens], config.max_new_tokens, block, whose)
    return 0


def _check_method_flags(args: argparse.Namespace) -> None:
    """One decoding method at a time, named by its flags (generate() names its own arguments: "draft_model"); and
    --num-speculative-tokens or --contrastive-alpha without the method they tune did nothing, silently."""
    methods = [flag for flag, on in (("--num-beams", args.num_beams > 1), ("--penalty-alpha", args.penalty_alpha > 0),
                                     ("--draft", args.draft), ("--amateur", args.amateur)) if on]
    if len(methods) > 1:
        raise ValueError(f"{' and '.join(methods)} each choose a decoding method: give one of them")
    for flag, value, method in (("--num-speculative-tokens", args.num_speculative_tokens, "draft"),
                                ("--contrastive-alpha", args.contrastive_alpha, "amateur")):
        if value is not None and not getattr(args, method):
            raise ValueError(f"{flag} tunes --{method}, which is not given: add --{method} MODEL or leave {flag} out")


def _check_contrastive_candidates(config) -> None:
    """--penalty-alpha weighs the --top-k best tokens at each step: without a --top-k (or the model folder's top_k) >
    1 there are none to weigh. generate() refused it only once the model had loaded, as "GenerationConfig.top_k=0",
    a name the user never typed. (Not in generation_config, which batch shares: a batch line may give its top_k.)"""
    if config.penalty_alpha > 0 and config.top_k < 2:
        raise ValueError(f"--penalty-alpha {config.penalty_alpha:g} (contrastive search) weighs the --top-k best "
                         f"tokens at each step and needs --top-k > 1, got {config.top_k}: add --top-k 4, say")


def _note_context_full(ends: list[tuple[str | None, int]], max_new_tokens: int, block_size: int,
                       whose: str = "the model's") -> None:
    """Says on stderr when an output stopped short of --max-new-tokens because the context was full (generate stops
    there rather than refuse), so a short output is not taken for the model's choice."""
    short = [n for reason, n in ends if reason == "length" and n < max_new_tokens]
    if short:
        which = "the output" if len(ends) == 1 else f"{len(short)} of {len(ends)} outputs"
        print(f"note: {which} stopped at {whose} context length ({block_size} tokens, prompt included) after "
              f"{min(short)} of {max_new_tokens} new tokens", file=sys.stderr)


def _helper_model(role: str, args: argparse.Namespace, tokenizer):
    """The --draft or --amateur model. Its tokenizer must be the model's: its logits are read as the model's ids (a
    draft with another vocabulary of the same size would only be slow; an amateur's would steer every token)."""
    path = getattr(args, role)
    model, theirs = load_model(path, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    if not model.config.causal:  # generate() would name its draft_model / amateur_model argument, not this flag
        raise ValueError(f"--{role} {path} is an encoder (a masked LM): the {role} must be a causal decoder")
    if theirs.hf.get_vocab(with_added_tokens=True) != tokenizer.hf.get_vocab(with_added_tokens=True):
        size = max(tokenizer.vocab_size, theirs.vocab_size)
        i = next(i for i in range(size) if tokenizer.id_to_token(i) != theirs.id_to_token(i))
        raise ValueError(f"--{role} {path} has another tokenizer than {args.path}: id {i} is "
                         f"{theirs.id_to_token(i)!r} there and {tokenizer.id_to_token(i)!r} here; train the {role} "
                         "with the model's tokenizer")
    return model
