"""What `--help` says matches what the verbs do (and what the README says of them)."""

from __future__ import annotations

import argparse

from neurallayers.__main__ import VERBS, build_verb_parser


def option_help(verb: str, option: str) -> str:
    text = " ".join(build_verb_parser(verb)[1].format_help().split())
    return text.split(f" {option} ", 1)[1].split(" --", 1)[0]


def test_batch_help_says_its_sampling_is_seeded_and_generate_help_what_no_seed_does():
    # batch samples with --seed 0 unless told otherwise (the README: "--seed, default 0"), and its --help listed
    # `--seed SEED` with nothing after it, as generate's did
    assert "its own \"seed\" (default: 0)" in option_help("batch", "--seed")
    for verb in ("generate", "chat"):
        assert "unset: new draws" in option_help(verb, "--seed"), verb


def test_eval_help_states_its_batch_size():
    # --mask-prob's help says "--batch-size and --max-batches as in training give its logged val loss", and
    # --batch-size's own line gave no default to compare with the run's
    assert "(default: 8)" in option_help("eval", "--batch-size")


def test_prepare_help_states_the_model_and_corpus_it_prepares_for_by_default():
    # `prepare` alone builds the demo preset's tokenizer on Shakespeare: a cache `train --preset tiny` never reads,
    # with nothing in --help to say so
    assert "default: demo" in option_help("prepare", "--preset")
    assert "else shakespeare" in option_help("prepare", "--data")


def test_every_beam_search_and_eos_flag_says_what_it_does():
    # --length-penalty and --ignore-eos had no help at all, so --help stated neither what they do nor
    # --length-penalty's default
    for verb in ("generate", "batch"):
        assert "beam search" in option_help(verb, "--length-penalty"), verb
        assert "(default: 1.0)" in option_help(verb, "--length-penalty"), verb
    for verb in ("generate", "batch", "chat"):
        assert "end-of-text token" in option_help(verb, "--ignore-eos"), verb


def test_every_option_of_every_verb_says_what_it_does_and_its_default():
    # argparse prints no line, so no default, for an option without help: `serve --log-level` showed only its choices
    for verb in VERBS:
        parser = build_verb_parser(verb)[1]
        bare = [action.option_strings[-1] for action in parser._actions
                if action.option_strings and action.help != argparse.SUPPRESS and not (action.help or "").strip()]
        assert bare == [], f"neurallayers {verb}: {bare} have no help"
    assert "(default: info)" in option_help("serve", "{critical,error,warning,info,debug}")
