"""pipeline(task, model): every task runs, results have transformers' shape, bad input fails clearly."""

import functools
import os
import re
import warnings

import numpy as np
import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.embeddings import embed, load_minilm, minilm_folder, tokenize_batch
from neurallayers.models import build_model
from neurallayers.pipelines import PIPELINES, label_names, pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return Tokenizer.load(minilm_folder())


@functools.cache
def _unpadded():
    raw = Tokenizer.load(minilm_folder()).hf
    raw.no_padding()  # MiniLM's tokenizer.json pads every input to 128
    return raw


def ids_of(text: str) -> list[int]:
    """[CLS] text [SEP] ids, computed apart from the pipeline."""
    return _unpadded().encode(text).ids


def tiny_bert(head: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(causal=False, vocab_size=30522, block_size=64, n_layer=1, n_head=2, n_embd=16,
                      intermediate_size=32, norm_placement="post", gelu_approx="none", type_vocab_size=2,
                      pad_token_id=0, pooler=head == "sequence_classification", head=head, **kw)
    return build_model(cfg).eval()


def hf_bert_folder(head_class, tokenizer, folder, *, seed: int, **config) -> None:
    """A tiny random transformers BERT with `head_class`'s head (BertForTokenClassification ...) and `tokenizer`,
    saved in `folder`: the oracle pipelines read the same weights."""
    import transformers

    cfg = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, **config)
    torch.manual_seed(seed)
    head_class(cfg).save_pretrained(folder)
    tokenizer.save(folder)


def test_unknown_task_lists_the_tasks(wordpiece):
    with pytest.raises(ValueError, match="tasks: feature-extraction, fill-mask") as e:
        pipeline("fill_mask", model=(tiny_bert("mlm"), wordpiece))
    assert "did you mean 'fill-mask'" in str(e.value)
    assert set(PIPELINES) == {"feature-extraction", "fill-mask", "text-classification", "token-classification",
                              "text-generation"}


def test_bad_model_argument_and_wrong_head(wordpiece, tmp_path):
    with pytest.raises(ValueError, match="model must be"):
        pipeline("fill-mask", model=42)
    with pytest.raises(ValueError, match="fill-mask needs .*head='none'"):
        pipeline("fill-mask", model=(tiny_bert("none"), wordpiece))
    with pytest.raises(ValueError, match="text-classification needs"):
        pipeline("text-classification", model=(tiny_bert("mlm"), wordpiece))
    with pytest.raises(ValueError, match="causal"):
        pipeline("text-generation", model=(tiny_bert("none"), wordpiece))
    with pytest.raises(FileNotFoundError):
        pipeline("fill-mask", model=tmp_path / "missing")


def test_an_option_a_pipeline_does_not_have_is_named_with_the_valid_ones(wordpiece):
    """transformers' options that are not built here (num_workers=, stride=) and typos get one line
    naming the option and the valid ones, not a TypeError from inside the pipeline."""
    with pytest.raises(ValueError, match=r"fill-mask: unknown option 'num_workers'; options: batch_size, mask_token"):
        pipeline("fill-mask", model=(tiny_bert("mlm"), wordpiece), num_workers=2)
    fill = pipeline("fill-mask", model=(tiny_bert("mlm"), wordpiece))
    with pytest.raises(ValueError, match=r"unknown option 'topk' \(did you mean 'top_k'\?\); options: top_k, targets$"):
        fill("a [MASK] b", topk=2)
    classify = pipeline("text-classification", model=(tiny_bert("sequence_classification"), wordpiece))
    with pytest.raises(ValueError, match="text-classification: unknown option 'return_all_scores'; options: top_k, "
                                         "truncation, function_to_apply$"):
        classify("hello", return_all_scores=True)
    tag = pipeline("token-classification", model=(tiny_bert("token_classification"), wordpiece))
    with pytest.raises(ValueError, match="unknown option 'stride'; options: ignore_labels, aggregation_strategy$"):
        tag("hello world", stride=2)
    features = pipeline("feature-extraction", model=(tiny_bert("none"), wordpiece))
    with pytest.raises(ValueError, match="feature-extraction: unknown option 'truncation'; options: pooling, normal"):
        features("hello", truncation=True)
    assert features("hello", pooling="cls", normalize=False).shape == (16,)


def test_feature_extraction_is_the_sentence_embedding():
    model, tok = load_minilm()
    fe = pipeline("feature-extraction", model=(model, tok))
    texts = ["A cat sits on the mat.", "Dogs bark."]
    many = fe(texts)
    one = fe(texts[0])
    assert many.shape == (2, 384) and one.shape == (384,)
    assert torch.allclose(many, embed(model, tok, texts), atol=1e-6)
    assert torch.allclose(one, many[0], atol=1e-6)
    assert fe("").shape == (384,)  # as sentence-transformers embeds it (test_embedding_recipe holds the values)
    with pytest.raises(ValueError, match="empty"):
        fe([])


def test_embeddings_are_ordinary_tensors_a_classifier_can_train_on(wordpiece):
    """Features for a probe trained on top: embed returned inference-mode tensors, and both backward through a head
    ("Inference tensors cannot be saved for backward") and an in-place edit of them failed."""
    model = tiny_bert("none")
    for vectors in (embed(model, wordpiece, ["a cat", "a dog"]),
                    pipeline("feature-extraction", model=(model, wordpiece))(["a cat", "a dog"])):
        assert not vectors.is_inference() and not vectors.requires_grad
        head = torch.nn.Linear(16, 2)
        torch.nn.functional.cross_entropy(head(vectors), torch.tensor([0, 1])).backward()
        assert head.weight.grad is not None
        vectors[0] = 0.0


def test_fill_mask_scores_are_the_model_probabilities(wordpiece):
    model = tiny_bert("mlm")
    fill = pipeline("fill-mask", model=(model, wordpiece))
    text = "Paris is the [MASK] of France."
    preds = fill(text, top_k=3)
    assert len(preds) == 3 and set(preds[0]) == {"score", "token", "token_str", "sequence"}
    ids = ids_of(text)
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0, ids.index(fill.mask_id)].softmax(-1)
    top = probs.topk(3)
    assert [p["token"] for p in preds] == top.indices.tolist()
    assert [p["score"] for p in preds] == pytest.approx(top.values.tolist(), abs=1e-6)
    for p in preds:
        assert p["sequence"] == wordpiece.decode([t if t != fill.mask_id else p["token"] for t in ids])
        assert "[MASK]" not in p["sequence"]
    both = fill([text, "I like [MASK]."], top_k=2)
    assert len(both) == 2 and both[0][:2] == preds[:2]  # batched rows equal the single run


def test_fill_mask_rejects_bad_input(wordpiece):
    fill = pipeline("fill-mask", model=(tiny_bert("mlm"), wordpiece))
    with pytest.raises(ValueError, match=r"inputs\[0\] must contain the mask token '\[MASK\]'"):
        fill("no mask here")
    with pytest.raises(ValueError, match="empty"):
        fill("   ")
    with pytest.raises(ValueError, match="top_k"):
        fill("a [MASK]", top_k=0)
    with pytest.raises(ValueError, match="mask token"):
        pipeline("fill-mask", model=(tiny_bert("mlm"), wordpiece), mask_token="<nope>")


def test_fill_mask_top_k_is_a_count_a_numpy_one_too(wordpiece):
    """top_k=True reached torch.topk ("TypeError: topk(): argument 'k' must be int, not bool"), and a numpy count
    (np.int64(2), which transformers' pipeline takes) was refused as not an int."""
    fill = pipeline("fill-mask", model=(tiny_bert("mlm"), wordpiece))
    assert fill("a [MASK] b", top_k=np.int64(2)) == fill("a [MASK] b", top_k=2)
    assert fill("a [MASK] b", top_k=np.int64(1), targets=["c", "d"]) == fill("a [MASK] b", top_k=1, targets=["c", "d"])
    for bad in (True, False, 2.0, "2", None):
        with pytest.raises(ValueError, match=rf"^top_k={re.escape(repr(bad))}: must be an int in \[1, "
                                             r"vocab_size=30522\]$"):
            fill("a [MASK] b", top_k=bad)


def test_fill_mask_from_a_saved_folder(wordpiece, tmp_path):
    from neurallayers.interop.hf import save_hf

    model = tiny_bert("mlm")
    save_hf(model, wordpiece, tmp_path / "mlm")
    fill = pipeline("fill-mask", model=tmp_path / "mlm")
    assert fill("hello [MASK]", top_k=2) == pipeline("fill-mask", model=(model, wordpiece))("hello [MASK]", top_k=2)


def test_text_classification_labels_scores_and_pairs(wordpiece):
    model = tiny_bert("sequence_classification", num_labels=3,
                      extra={"id2label": {"0": "neg", "1": "neu", "2": "pos"}})
    clf = pipeline("text-classification", model=(model, wordpiece), batch_size=2)
    texts = ["great film", "terrible acting and a dull plot", "ok"]
    out = clf(texts)
    with torch.no_grad():
        ids = [ids_of(t) for t in texts]
        probs = [model(torch.tensor([i])).logits[0].softmax(-1) for i in ids]
    for res, p in zip(out, probs, strict=True):
        assert res["label"] == ["neg", "neu", "pos"][int(p.argmax())]
        assert res["score"] == pytest.approx(float(p.max()), abs=1e-6)
    every = clf("great film", top_k=None)
    assert [r["label"] for r in every] != [] and sum(r["score"] for r in every) == pytest.approx(1.0)
    # shaped as transformers' pipeline returns them: a string gives a list of one, or its top_k when top_k is passed
    assert clf("great film") == [out[0]] == clf("great film", top_k=1)
    assert clf(texts, top_k=1) == [[r] for r in out]
    pair = clf({"text": "A man eats.", "text_pair": "Someone is eating."})
    assert set(pair) == {"label", "score"}
    multi = pipeline("text-classification", model=(tiny_bert("sequence_classification", num_labels=3, extra={
        "problem_type": "multi_label_classification"}), wordpiece))
    with torch.no_grad():
        logits = multi.model(torch.tensor([ids_of("great film")])).logits[0]
    scores = {r["label"]: r["score"] for r in multi("great film", top_k=None)}  # a sigmoid per label
    assert [scores[f"LABEL_{i}"] for i in range(3)] == pytest.approx(logits.sigmoid().tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="text_pair"):
        clf([{"text": "a"}])
    # transformers gives every label for a top_k past their number (it was refused)
    assert clf("great film", top_k=4) == clf("great film", top_k=None) == clf("great film", top_k=3)
    for bad in (0, 1.5, "2"):
        with pytest.raises(ValueError, match=rf"^top_k={bad!r}: must be None \(all labels\) or an int >= 1"):
            clf("x", top_k=bad)
    assert label_names(tiny_bert("sequence_classification").config) == ["LABEL_0", "LABEL_1"]
    regression = pipeline("text-classification", model=(tiny_bert("sequence_classification", num_labels=1), wordpiece))
    assert 0.0 < regression("fine")[0]["score"] < 1.0  # a sigmoid for a single output


@pytest.mark.parametrize("problem_type", ["regression", "multi_label_classification", None])
def test_text_classification_scores_equal_transformers_pipeline(wordpiece, tmp_path, problem_type):
    """A regression model (an STS-B cross-encoder: num_labels 1, problem_type "regression") scores its raw output in
    transformers' pipeline; ours gave its sigmoid."""
    transformers = pytest.importorskip("transformers")
    hf_bert_folder(transformers.BertForSequenceClassification, wordpiece, tmp_path, seed=0,
                   num_labels=1 if problem_type else 3, problem_type=problem_type)
    # blank rows are labelled from [CLS] [SEP] (one failed the whole call); truncation=True is transformers' switch
    texts = ["great film", "terrible acting and a dull plot", "", "   "]
    want = transformers.pipeline("text-classification", model=str(tmp_path), device="cpu")(texts, top_k=None,
                                                                                           truncation=True)
    got = pipeline("text-classification", model=tmp_path)(texts, top_k=None, truncation=True)
    assert [[r["label"] for r in row] for row in got] == [[r["label"] for r in row] for row in want]
    scores = [r["score"] for row in got for r in row]
    assert scores == pytest.approx([r["score"] for row in want for r in row], abs=1e-5)


def test_token_classification_entities_and_offsets(wordpiece):
    model = tiny_bert("token_classification", num_labels=2, extra={"id2label": {"0": "O", "1": "ENT"}})
    ner = pipeline("token-classification", model=(model, wordpiece))
    text = "Angela Merkel visited Washington yesterday."
    every = ner(text, ignore_labels=())
    tokens = ids_of(text)
    assert [e["index"] for e in every] == list(range(1, len(tokens) - 1))  # [CLS] is index 0, left out
    for e in every:
        assert set(e) == {"entity", "score", "index", "word", "start", "end"}
        assert text[e["start"]:e["end"]].lower() == e["word"].removeprefix("##")
        assert 0.5 <= e["score"] <= 1.0
    default = ner(text)
    assert [e for e in every if e["entity"] != "O"] == default
    assert len(ner([text, "Berlin"])) == 2


def test_text_generation_runs_on_a_decoder():
    tok = Tokenizer.train_char(["hello world, a tiny corpus."])
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    gen = pipeline("text-generation", model=(model, tok))
    out = gen("hello", max_new_tokens=4, temperature=0)
    assert len(out) == 1 and out[0]["generated_text"].startswith("hello")
    assert gen(["hello", "world"], max_new_tokens=2, temperature=0)[0] == gen("hello", max_new_tokens=2,
                                                                              temperature=0)
    two = gen(["hello", "world"], max_new_tokens=3, temperature=1.0, num_return_sequences=2, seed=0)
    assert [len(r) for r in two] == [2, 2] and two[1][0]["generated_text"].startswith("world")
    # "" generates from the bos token alone, as transformers' pipeline does (test_text_generation_hf_pipeline)
    from neurallayers.generation import generate

    start = generate(model, tok, [[tok.bos_id]], max_new_tokens=3, temperature=0)[0].text
    assert gen("", max_new_tokens=3, temperature=0) == [{"generated_text": start}]
    tok.bos_token = None
    with pytest.raises(ValueError, match=r"^inputs\[1\] is empty, and the tokenizer has no bos token to start from"):
        gen(["hello", ""])
    tok.bos_token = tok.eos_token
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen("hello", max_new_tokens=0)
    greedy = gen("hello", max_new_tokens=4, temperature=0)[0]["generated_text"]
    assert gen("hello", max_new_tokens=4, do_sample=False)[0]["generated_text"] == greedy  # transformers' names
    tail = gen("hello", max_new_tokens=4, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert "hello" + tail == greedy
    # max_length is transformers' total of prompt and new tokens (test_text_generation_hf_pipeline holds it to theirs)
    assert gen("hello", max_length=9, do_sample=False)[0]["generated_text"] == greedy
    with pytest.raises(ValueError, match="do_sample=True with temperature=0"):  # it ran greedy, silently
        gen("hello", max_new_tokens=4, do_sample=True, temperature=0)
    # a typo of the pipeline's own option was "GenerationConfig has no field 'return_fulltext'", with no hint
    # the options are _run's keywords (a hand-kept copy lacked tools, documents, tokenizer_encode_kwargs)
    with pytest.raises(ValueError, match=r"^text-generation: unknown option 'return_fulltext' \(did you mean "
                                         r"'return_full_text'\?\); options: return_full_text, continue_final_message, "
                                         r"prefix, handle_long_generation, max_length, return_tensors, return_text, "
                                         r"clean_up_tokenization_spaces, tools, documents, tokenizer_encode_kwargs, "
                                         r"do_sample, add_special_tokens, pad_token_id and GenerationConfig's fields "
                                         r"\(max_new_tokens, "):
        gen("hello", return_fulltext=False)


def test_text_generation_from_a_folder_samples_as_its_generation_config_says(tmp_path):
    """transformers' pipeline and `neurallayers generate` use the folder's generation_config.json for the knobs left
    unset (Llama-3-Instruct: temperature 0.6, top_p 0.9; do_sample false: greedy); the pipeline sampled at 1.0."""
    import json

    import transformers

    from neurallayers.generation import generate
    from neurallayers.interop.hf import save_hf

    tok = Tokenizer.train_char(["hello world, a tiny corpus."])
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    save_hf(model, tok, tmp_path)
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "do_sample": True, "temperature": 0.3, "top_k": 3}))
    gen = pipeline("text-generation", model=tmp_path)

    def text(**kw) -> str:
        return generate(model, tok, "hello", max_new_tokens=12, seed=1, **kw)[0].text

    def piped(**kw) -> str:
        return gen("hello", max_new_tokens=12, seed=1, return_full_text=False, **kw)[0]["generated_text"]

    assert piped() == text(temperature=0.3, top_k=3) != text()
    assert piped(temperature=1.5) == text(temperature=1.5, top_k=3)  # a knob given wins, the others stay
    assert piped(num_beams=2) == text(num_beams=2, temperature=0)  # beam search takes none
    path.write_text(json.dumps({**json.loads(path.read_text()), "do_sample": False}))
    gen = pipeline("text-generation", model=tmp_path)
    assert piped() == text(temperature=0)
    # do_sample=True overrides the folder's greedy and samples with its temperature and top_k, as transformers does
    # (it sampled at 1.0 without them)
    assert piped(do_sample=True) == text(temperature=0.3, top_k=3) != text()
    # transformers' greedy applies the file's repetition_penalty (it was dropped with the other knobs)
    path.write_text(json.dumps({**json.loads(path.read_text()), "repetition_penalty": 3.0}))
    gen = pipeline("text-generation", model=tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompt = tok.encode("hello")
    want = hf.generate(torch.tensor([prompt]), max_new_tokens=12, pad_token_id=0)[0, len(prompt):].tolist()
    assert piped() == tok.decode(want) == text(temperature=0, repetition_penalty=3.0) != text(temperature=0)
    # a (model, tokenizer) pair samples as transformers' pipeline does without a file: at 0.7 with top_k 50
    assert pipeline("text-generation", model=(model, tok))("hello", max_new_tokens=12, seed=1, return_full_text=False
                                                            )[0]["generated_text"] == text(temperature=0.7, top_k=50)


def test_a_lone_surrogate_is_named_not_a_tokenizers_type_error(wordpiece):
    """JSON's "\\ud83d" (half an emoji) or a non-UTF-8 argument decodes to a lone surrogate; HF tokenizers refuse it
    with "TypeError: TextEncodeInput must be Union[TextInputSequence, ...]", naming neither the text nor the cause."""
    bad = ["fine", "half an emoji \ud83d here"]
    where = r"\[1\] has a character that is not valid Unicode at position 14 \(U\+D83D, a lone surrogate"
    with pytest.raises(ValueError, match="texts" + where):
        embed(tiny_bert("none"), wordpiece, bad)
    with pytest.raises(ValueError, match="texts" + where):
        tokenize_batch(wordpiece, bad)
    with pytest.raises(ValueError, match="text_pairs" + where):
        tokenize_batch(wordpiece, ["a", "b"], text_pairs=bad)
    with pytest.raises(ValueError, match="inputs" + where):
        pipeline("fill-mask", model=(tiny_bert("mlm"), wordpiece))(["[MASK] is", bad[1]])
    with pytest.raises(ValueError, match="inputs" + where):
        pipeline("token-classification", model=(tiny_bert("token_classification"), wordpiece))(bad)
    with pytest.raises(ValueError, match="inputs" + where):
        pipeline("feature-extraction", model=(tiny_bert("none"), wordpiece))(bad)
    assert embed(tiny_bert("none"), wordpiece, ["a whole emoji \U0001f600"]).shape == (1, 16)


def test_text_generation_switches_are_read_as_transformers_reads_them():
    """return_full_text=None is transformers' default (the prompt kept; it was dropped here), and do_sample=0 or
    "false" sampled where transformers decodes greedily: a switch that is not a bool is one clear line."""
    tok = Tokenizer.train_char(["hello world, a tiny corpus."])
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    gen = pipeline("text-generation", model=(model, tok))
    full = gen("hello", max_new_tokens=4, do_sample=False)
    assert gen("hello", max_new_tokens=4, do_sample=False, return_full_text=None) == full
    assert full[0]["generated_text"].startswith("hello")
    for name, value in (("do_sample", 0), ("do_sample", "false"), ("return_full_text", "no")):
        with pytest.raises(ValueError, match=f"^{name}={value!r}: must be True or False$"):
            gen("hello", max_new_tokens=4, **{name: value})


def test_a_pipeline_leaves_the_callers_model_in_its_own_mode(wordpiece):
    """pipeline() put the model in eval mode for good: one made in the middle of training (a fill-mask check, say)
    turned its dropout off for the rest of the run. Each call runs without dropout, the mode comes back after."""
    model = tiny_bert("mlm", dropout=0.5)
    want = pipeline("fill-mask", model=(model, wordpiece))("the [MASK] sat")
    model.train()
    fill = pipeline("fill-mask", model=(model, wordpiece))
    assert model.training
    assert fill("the [MASK] sat") == want and model.training  # no dropout inside, training mode after
    classify = tiny_bert("sequence_classification").train()
    pipeline("text-classification", model=(classify, wordpiece))("some text")
    assert classify.training


def test_embedding_arguments_of_the_wrong_kind_are_one_clear_line(wordpiece):
    """A tokenizer that is not one was "AttributeError: 'NoneType' object has no attribute 'model_max_length'";
    pooling="" took the model's pooling and normalize="no" (truthy) normalised, silently; a float max_length was
    "TypeError: 'float' object cannot be interpreted as an integer"; lists to cosine_similarity an AttributeError;
    a run's path as the model "embed needs an encoder model (causal=False), got str"."""
    from neurallayers.embeddings import cosine_similarity

    model = tiny_bert("none")
    with pytest.raises(ValueError, match="tokenizer must be a neurallayers Tokenizer .*, got NoneType"):
        embed(model, None, ["a"])
    with pytest.raises(ValueError, match="tokenizer must be a neurallayers Tokenizer .*, got str"):
        tokenize_batch("tokenizer.json", ["a"])
    with pytest.raises(ValueError, match="tokenizer must be a neurallayers Tokenizer .*, got NoneType"):
        pipeline("feature-extraction", model=(model, None))
    with pytest.raises(ValueError, match=r"embed needs a loaded model, got the path 'runs/bert': model, tokenizer = "):
        embed("runs/bert", wordpiece, ["a"])
    with pytest.raises(ValueError, match="pooling='': valid are mean"):
        embed(model, wordpiece, ["a"], pooling="")
    with pytest.raises(ValueError, match=r"normalize='no': must be True, False or None"):
        embed(model, wordpiece, ["a"], normalize="no")
    with pytest.raises(ValueError, match=r"batch_size=True: must be an int >= 1"):
        embed(model, wordpiece, ["a"], batch_size=True)
    with pytest.raises(ValueError, match=r"max_length=2.5: must be an int >= 2"):
        tokenize_batch(wordpiece, ["a"], max_length=2.5)
    with pytest.raises(ValueError, match="cosine_similarity needs two tensors .*, got list and list"):
        cosine_similarity([1.0, 0.0], [0.0, 1.0])


def test_tokenize_batch_takes_a_numpy_int_max_length_as_before(wordpiece):
    """A length read from a numpy array (np.int64) truncates as the same int does: it did until the argument check
    came, which refused it ("must be an int >= 2")."""
    want = tokenize_batch(wordpiece, ["hello world again and again"], max_length=4)
    got = tokenize_batch(wordpiece, ["hello world again and again"], max_length=np.int64(4))
    assert got["input_ids"].shape[1] == 4 and torch.equal(got["input_ids"], want["input_ids"])
    with pytest.raises(ValueError, match=r"max_length=np.int64\(1\): must be an int >= 2"):
        tokenize_batch(wordpiece, ["a"], max_length=np.int64(1))


def test_a_numpy_int_batch_size_batches_as_the_same_int(wordpiece):
    """embed took a numpy max_length but refused a numpy batch_size as "batch_size=np.int64(2): must be an int >= 1",
    naming an int >= 1 as wrong (a batch size computed with numpy, as a sweep does); pipelines the same."""
    model, texts = tiny_bert("none"), ["one", "two words", "three more words", "four"]
    want = embed(model, wordpiece, texts, batch_size=2)
    assert torch.equal(embed(model, wordpiece, texts, batch_size=np.int64(2)), want)
    fe = pipeline("feature-extraction", model=(model, wordpiece), batch_size=np.int32(3))
    assert fe.batch_size == 3 and type(fe.batch_size) is int
    assert torch.allclose(fe(texts, batch_size=np.int64(1)), fe(texts), atol=1e-6)
    for bad in (np.int64(0), np.bool_(True), 2.0):
        with pytest.raises(ValueError, match=r"batch_size=.*: must be an int >= 1"):
            embed(model, wordpiece, ["a"], batch_size=bad)


def test_embed_takes_a_numpy_int_max_length_as_tokenize_batch_does(wordpiece):
    """embed refused the np.int64 length that tokenize_batch (and embed, before its argument check) takes."""
    model, texts = tiny_bert("none"), ["hello world again and again", "a"]
    torch.testing.assert_close(embed(model, wordpiece, texts, max_length=np.int64(4)),
                               embed(model, wordpiece, texts, max_length=4))
    with pytest.raises(ValueError, match=r"max_length=np.int64\(1\): must be an int >= 2"):
        embed(model, wordpiece, texts, max_length=np.int64(1))


def test_token_classification_ignore_labels_as_transformers_reads_them(wordpiece):
    """ignore_labels=None (transformers' default, "O") was "TypeError: argument of type 'NoneType' is not iterable", and
    a string was matched by substring: "B-ENT" also dropped the entities labelled "ENT"."""
    model = tiny_bert("token_classification", num_labels=3, extra={"id2label": {"0": "O", "1": "ENT", "2": "B-ENT"}})
    ner = pipeline("token-classification", model=(model, wordpiece))
    text = "Angela Merkel visited Washington yesterday."
    every = ner(text, ignore_labels=[])
    assert {e["entity"] for e in every} == {"O", "ENT", "B-ENT"}  # the seed gives all three
    assert ner(text, ignore_labels=None) == ner(text) == [e for e in every if e["entity"] != "O"]
    assert ner(text, ignore_labels="B-ENT") == [e for e in every if e["entity"] != "B-ENT"]
    with pytest.raises(ValueError, match=r"ignore_labels=5: must be a list of label names"):
        ner(text, ignore_labels=5)
    # other collections of names, which `entity in ignore_labels` read before the check came: refused by it
    assert ner(text, ignore_labels=frozenset({"O"})) == ner(text)
    assert ner(text, ignore_labels={"O": 0, "B-ENT": 2}.keys()) == [e for e in every if e["entity"] == "ENT"]


def test_text_generation_takes_chats_as_transformers_pipeline_does():
    """A list of role/content messages is a conversation (transformers' pipeline renders its chat template and returns
    the messages with the reply appended); ours refused it ("inputs[0] must be a str, got dict")."""
    from neurallayers.data.chat import DEFAULT_STOP, render_chat
    from neurallayers.generation import generate

    tok = Tokenizer.train_char(["hello world, a tiny corpus. user: assistant: system:\n"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    gen = pipeline("text-generation", model=(model, tok))
    chat = [{"role": "system", "content": "tiny"}, {"role": "user", "content": "hello"}]
    out = gen(chat, max_new_tokens=6, temperature=0)
    ids = tok.encode(render_chat(tok, chat))
    want = generate(model, tok, [ids], max_new_tokens=6, temperature=0, stop=[DEFAULT_STOP])[0].text.lstrip()
    assert out == [{"generated_text": [*chat, {"role": "assistant", "content": want}]}]
    assert gen(chat, max_new_tokens=6, temperature=0, return_full_text=False) == [{"generated_text": want}]
    assert gen([chat, chat[1:]], max_new_tokens=6, temperature=0)[0] == out  # a list of chats: one result each
    with pytest.raises(ValueError, match="prompts .* or chats .*, not both"):
        gen([chat, "hello"])

    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    ids = tok.encode("<system>tiny<user>hello<assistant>")
    want = generate(model, tok, [ids], max_new_tokens=6, temperature=0)[0].text
    assert gen(chat, max_new_tokens=6, temperature=0, return_full_text=False) == [{"generated_text": want}]


def test_batch_size_per_call_as_transformers_pipelines_take_it(wordpiece):
    """`pipe(texts, batch_size=8)` is transformers' idiom; it was "unknown option 'batch_size'". The results do not
    depend on it, and the pipeline's own batch size stays for the next call."""
    texts = ["a [MASK] sat on the mat.", "the [MASK] is blue, the grass green and the sun is hot", "[MASK]."]
    fill = pipeline("fill-mask", model=(tiny_bert("mlm"), wordpiece), batch_size=3)
    want = fill(texts)
    sizes = []
    forward = fill._forward
    fill._forward = lambda batch: sizes.append(len(batch["input_ids"])) or forward(batch)
    got = fill(texts, batch_size=1)
    assert sizes == [1, 1, 1]
    assert [[p["token"] for p in r] for r in got] == [[p["token"] for p in r] for r in want]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for r, s in zip(got, want, strict=True)
               for a, b in zip(r, s, strict=True))
    assert fill.batch_size == 3
    fe = pipeline("feature-extraction", model=(tiny_bert("none"), wordpiece))
    assert torch.allclose(fe(texts, batch_size=2), fe(texts), atol=1e-6)
    for bad in (0, 1.5, "8"):
        with pytest.raises(ValueError, match=rf"^batch_size={bad!r}: must be an int >= 1$"):
            fe(texts, batch_size=bad)
    assert fill.batch_size == 3


def test_blank_rows_have_no_entities_as_in_transformers(wordpiece, tmp_path):
    """A blank row failed the whole token-classification call ("inputs[1] is empty"); transformers finds no entities
    in it (text-classification's blank rows: test_text_classification_scores_equal_transformers_pipeline)."""
    transformers = pytest.importorskip("transformers")
    hf_bert_folder(transformers.BertForTokenClassification, wordpiece, tmp_path, seed=0, num_labels=3)
    texts = ["great film", "", "   "]
    got = pipeline("token-classification", model=tmp_path)(texts, ignore_labels=[])
    want = transformers.pipeline("token-classification", model=str(tmp_path), device="cpu")(texts, ignore_labels=[])
    assert [[r["entity"] for r in row] for row in got] == [[r["entity"] for r in row] for row in want]
    assert [r["score"] for row in got for r in row] == pytest.approx([r["score"] for row in want for r in row],
                                                                     abs=1e-5)
    assert got[1:] == [[], []] and got[0]
    clf = pipeline("text-classification", model=(tiny_bert("sequence_classification"), wordpiece))
    with pytest.raises(ValueError, match=r"^truncation=False: only True; a text longer than the model reads"):
        clf(texts, truncation=False)


def test_device_and_dtype_load_the_model_and_options_are_checked_first(tmp_path, monkeypatch):
    """pipeline(device=...) loaded the model, then refused "unknown option 'device'"; now device and dtype go to
    load(), a (model, tokenizer) pair refuses them, and a bad option fails before anything loads."""
    import neurallayers.api as api
    from neurallayers.interop.hf import save_hf

    model = tiny_bert("mlm")
    save_hf(model, Tokenizer.load(minilm_folder()), tmp_path)
    loads = []
    real = api.load
    monkeypatch.setattr(api, "load", lambda path, **kw: loads.append(kw) or real(path, **kw))
    with pytest.raises(ValueError, match=r"^fill-mask: unknown option 'topk'"):
        pipeline("fill-mask", model=tmp_path, topk=2)
    assert loads == []
    fill = pipeline("fill-mask", model=tmp_path, device="cpu", dtype="bf16")
    assert loads == [{"device": "cpu", "dtype": "bf16"}]
    assert next(fill.model.parameters()).dtype == torch.bfloat16
    on_cpu = pipeline("fill-mask", model=tmp_path, device=-1)  # transformers' int spelling of the CPU (was refused)
    assert loads[-1]["device"] == -1 and on_cpu.device.type == "cpu"  # load reads the int, as pipeline did
    with pytest.raises(ValueError, match=r"^device= applies to a model loaded from a path"):
        pipeline("fill-mask", model=(model, fill.tokenizer), device="cpu")
    with pytest.raises(ValueError, match=r"^dtype= applies to a model loaded from a path"):
        pipeline("fill-mask", model=(model, fill.tokenizer), dtype=torch.float32)


def test_token_classification_entities_equal_transformers_pipeline_field_for_field(wordpiece, tmp_path):
    """An unknown token's word was "[UNK]" where transformers gives the text it stands for (the snowman, the parrot,
    the 110-letter word), so an entity found there could not be read back."""
    transformers = pytest.importorskip("transformers")
    hf_bert_folder(transformers.BertForTokenClassification, wordpiece, tmp_path, seed=0, num_labels=3)
    texts = ["Angela Merkel visited Washingtonian yesterday.", "Snowman ☃ and 🦜 met " + "x" * 110, "héllo wörld"]
    got = pipeline("token-classification", model=tmp_path)(texts, ignore_labels=[])
    want = transformers.pipeline("token-classification", model=str(tmp_path), device="cpu")(texts, ignore_labels=[])
    fields = ("entity", "index", "word", "start", "end")
    assert [[tuple(e[f] for f in fields) for e in row] for row in got] == \
        [[tuple(e[f] for f in fields) for e in row] for row in want]
    assert [e["score"] for row in got for e in row] == pytest.approx([float(e["score"]) for row in want for e in row],
                                                                     abs=1e-5)
    assert [e["word"] for e in got[1] if e["start"] > 7] == ["☃", "and", "🦜", "met", "x" * 110]


def test_transformers_task_aliases_name_the_same_pipelines(wordpiece):
    """pipeline("ner") and pipeline("sentiment-analysis"), transformers' own spellings of token- and
    text-classification, were "unknown task"; a task that is not a string was a TypeError (unhashable list)."""
    ner = pipeline("ner", model=(tiny_bert("token_classification", num_labels=2), wordpiece))
    assert type(ner) is PIPELINES["token-classification"] and ner.task == "token-classification"
    text = "Angela Merkel visited Washington yesterday."
    assert ner(text, ignore_labels=[]) == pipeline("token-classification", model=(ner.model, wordpiece))(
        text, ignore_labels=[])
    sentiment = pipeline("sentiment-analysis", model=(tiny_bert("sequence_classification"), wordpiece))
    assert type(sentiment) is PIPELINES["text-classification"] and sentiment.task == "text-classification"
    for bad in (["fill-mask"], None, 3):
        with pytest.raises(ValueError, match=rf"^unknown task {re.escape(repr(bad))}( \(did you mean .*\))?; tasks: "
                                             "feature-extraction, fill-mask"):
            pipeline(bad, model=(tiny_bert("mlm"), wordpiece))
    with pytest.raises(ValueError, match=r"aliases: ner \(token-classification\), sentiment-analysis"):
        pipeline("summarization", model=(tiny_bert("mlm"), wordpiece))


NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
NER_TEXTS = ["Angela Merkel visited Washingtonian yesterday with Emmanuel-Macron.", "Snowman ☃ met 🦜 in Reykjavík",
             "", "  unbelievably  overcomplicated hyperparameterization"]


def ner_folder(tokenizer: Tokenizer, folder) -> str:
    """A tiny BertForTokenClassification with BIO labels, written by transformers, and `tokenizer`."""
    transformers = pytest.importorskip("transformers")
    hf_bert_folder(transformers.BertForTokenClassification, tokenizer, folder, seed=3, num_labels=5,
                   id2label=NER_LABELS, label2id={v: k for k, v in NER_LABELS.items()})
    return str(folder)


@pytest.fixture(scope="module")
def ner_folders(wordpiece, tmp_path_factory):
    """One on MiniLM's WordPiece (word pieces marked "##") and one on a byte-level BPE trained here (no marker:
    transformers' fallback rule says which pieces continue a word)."""
    bpe = Tokenizer.train_bpe([open(__file__, encoding="utf-8").read()], vocab_size=400)
    return {"wordpiece": ner_folder(wordpiece, tmp_path_factory.mktemp("ner")),
            "bpe": ner_folder(bpe, tmp_path_factory.mktemp("ner-bpe"))}


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max", "SIMPLE"])
def test_token_classification_aggregation_equals_transformers_pipeline(ner_folders, kind, strategy):
    """aggregation_strategy, how transformers' NER pipeline joins word pieces into words and B-/I- tags into entities
    ({entity_group, score, word, start, end}), was refused as an unknown option."""
    transformers = pytest.importorskip("transformers")
    theirs = transformers.pipeline("token-classification", model=ner_folders[kind], device="cpu")
    ours = pipeline("ner", model=ner_folders[kind], batch_size=3)
    # "" is no tokens at all without [CLS] / [SEP]: transformers fails on it (see the test after next)
    texts = NER_TEXTS if kind == "wordpiece" else [t for t in NER_TEXTS if t]
    for ignore in ([], ["O"], ["O", "PER"]):
        got = ours(texts, aggregation_strategy=strategy, ignore_labels=ignore)
        with warnings.catch_warnings():  # "Tokenizer does not support real words, using fallback heuristic"
            warnings.simplefilter("ignore")
            want = theirs(texts, aggregation_strategy=strategy, ignore_labels=ignore)
        assert [[{k: v for k, v in e.items() if k != "score"} for e in row] for row in got] == \
            [[{k: v for k, v in e.items() if k != "score"} for e in row] for row in want]
        assert [e["score"] for row in got for e in row] == \
            pytest.approx([float(e["score"]) for row in want for e in row], abs=1e-5)
    grouped = ours(NER_TEXTS[0], aggregation_strategy=strategy, ignore_labels=[])
    assert {e.get("entity_group", e.get("entity")) for e in grouped} - {"O"}  # the seed finds entities


def test_token_classification_aggregation_refuses_what_it_does_not_know(ner_folders):
    ner = pipeline("token-classification", model=ner_folders["wordpiece"])
    for bad in ("average_first", 3, True):
        with pytest.raises(ValueError, match=rf"^aggregation_strategy={re.escape(repr(bad))}: must be one of none, "
                                             "simple, first, average, max"):
            ner("Angela Merkel", aggregation_strategy=bad)


def test_a_text_that_encodes_to_no_tokens_is_classified_the_same_in_any_batch():
    """With a tokenizer that adds no [CLS] / [SEP] (a byte-level BPE trained here), "" is no tokens at all: alone it
    failed inside the model ("input_ids is empty"), and in a batch it was an all-padding row given a made-up label.
    transformers' pipelines fail on it too (a reshape error). Now token-classification finds no entities in it, at
    any batch size, and text-classification names it."""
    tok = Tokenizer.train_bpe([open(__file__, encoding="utf-8").read()], vocab_size=300)
    assert tokenize_batch(tok, [""], empty_ok=True)["input_ids"].shape == (1, 0)

    def model(head: str) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(ModelConfig(causal=False, vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                                       n_embd=16, head=head, num_labels=3)).eval()

    ner = pipeline("token-classification", model=(model("token_classification"), tok))
    texts = ["", "a cat sat", "", " "]
    every = ner(texts, ignore_labels=[])
    assert every == ner(texts, ignore_labels=[], batch_size=1) == [ner(t, ignore_labels=[]) for t in texts]
    assert every[0] == every[2] == [] and every[1] and every[3]
    assert ner([""], aggregation_strategy="simple") == [[]]
    clf = pipeline("text-classification", model=(model("sequence_classification"), tok))
    assert clf(["a cat sat", " "]) == clf(["a cat sat", " "], batch_size=1)
    for batch_size in (1, 4):
        with pytest.raises(ValueError, match=r"^inputs\[2\] is '', which this tokenizer encodes to no tokens \(it adds "
                                             r"no special tokens\): give some text$"):
            clf(["a cat", " ", "", "sat"], batch_size=batch_size)
    with pytest.raises(ValueError, match=r"^inputs\[0\] is \{'text': '', 'text_pair': ''\}, which this tokenizer"):
        clf({"text": "", "text_pair": ""})


@pytest.mark.parametrize("function", ["sigmoid", "softmax", "none", "NONE", "default", None])
@pytest.mark.parametrize("num_labels", [1, 3])
def test_text_classification_function_to_apply_equals_transformers_pipeline(wordpiece, tmp_path, function,
                                                                             num_labels):
    """function_to_apply ("none": a cross-encoder's raw logits; "sigmoid": independent labels) was refused as an
    unknown option."""
    transformers = pytest.importorskip("transformers")
    hf_bert_folder(transformers.BertForSequenceClassification, wordpiece, tmp_path, seed=1, num_labels=num_labels)
    theirs = transformers.pipeline("text-classification", model=str(tmp_path), device="cpu")
    ours = pipeline("sentiment-analysis", model=tmp_path)
    texts = ["great film", "terrible acting and a dull plot"]
    options = {} if function is None else {"function_to_apply": function}
    if function == "default":  # documented by transformers, missing from its enum (a KeyError there): unset here
        theirs_options = {}
    else:
        theirs_options = options
    for inputs, top_k in ((texts, {}), (texts, {"top_k": None}), (texts[0], {}), (texts[0], {"top_k": 2})):
        got, want = _flat(ours(inputs, **options, **top_k)), _flat(theirs(inputs, **theirs_options, **top_k))
        assert [label for label, _ in got] == [label for label, _ in want]
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-5)


def _flat(result) -> list[tuple[str, float]]:
    """(label, score) of a text-classification result, nested lists flattened in order (the shape is compared by
    the caller's labels: a nesting that differs gives other pairs)."""
    if isinstance(result, dict):
        return [(result["label"], float(result["score"]))]
    return [("[", 0.0), *(pair for x in result for pair in _flat(x)), ("]", 0.0)]


def test_text_classification_function_to_apply_refuses_other_names(wordpiece):
    clf = pipeline("text-classification", model=(tiny_bert("sequence_classification"), wordpiece))
    for bad in ("relu", 1, True):
        with pytest.raises(ValueError, match=rf"^function_to_apply={bad!r}: must be one of sigmoid, softmax, none "
                                             r"\(or default\)$"):
            clf("x", function_to_apply=bad)


def test_options_given_to_pipeline_are_every_calls_defaults_as_in_transformers(ner_folders, wordpiece, tmp_path):
    """pipeline("ner", model=..., aggregation_strategy="simple"), transformers' own example, and pipeline(...,
    top_k=None) were refused ("unknown option 'aggregation_strategy'; options: batch_size"): a call option given to
    pipeline() is the default of every call, the call's own over it, with transformers' result shapes."""
    transformers = pytest.importorskip("transformers")
    folder = ner_folders["wordpiece"]
    ours = pipeline("ner", model=folder, aggregation_strategy="simple", ignore_labels=[])
    theirs = transformers.pipeline("ner", model=folder, device="cpu", aggregation_strategy="simple", ignore_labels=[])
    for options in ({}, {"aggregation_strategy": "none"}, {"ignore_labels": ["O"]}):
        got, want = ours(NER_TEXTS, **options), theirs(NER_TEXTS, **options)
        assert [[{k: v for k, v in e.items() if k != "score"} for e in row] for row in got] == \
            [[{k: v for k, v in e.items() if k != "score"} for e in row] for row in want]
    assert ours.defaults == {"aggregation_strategy": "simple", "ignore_labels": []}

    hf_bert_folder(transformers.BertForSequenceClassification, wordpiece, tmp_path, seed=0, num_labels=3)
    for top_k in (None, 2, 1):
        ours = pipeline("text-classification", model=tmp_path, top_k=top_k)
        theirs = transformers.pipeline("text-classification", model=str(tmp_path), device="cpu", top_k=top_k)
        for inputs, options in (("good", {}), (["good", "bad"], {}), ("good", {"top_k": 1}), ("good", {"top_k": 3})):
            got, want = _flat(ours(inputs, **options)), _flat(theirs(inputs, **options))
            assert [label for label, _ in got] == [label for label, _ in want]  # [[...]] for a string, as there
            assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)

    fill = pipeline("fill-mask", model=(tiny_bert("mlm"), wordpiece), top_k=2, batch_size=3)
    assert len(fill("a [MASK] b")) == 2 and len(fill("a [MASK] b", top_k=4)) == 4 and fill.batch_size == 3
    features = pipeline("feature-extraction", model=(tiny_bert("none"), wordpiece), return_tensors=False)
    assert isinstance(features("hello"), list) and isinstance(features("hello", return_tensors=True), torch.Tensor)


def test_a_bad_option_given_to_pipeline_is_named_before_the_model_loads(tmp_path):
    with pytest.raises(ValueError, match=r"^fill-mask: unknown option 'topk' \(did you mean 'top_k'\?\); options: "
                                         r"batch_size, mask_token, top_k, targets$"):
        pipeline("fill-mask", model=tmp_path / "missing", topk=2)
    with pytest.raises(ValueError, match=r"^feature-extraction: unknown option 'truncation'; options: batch_size, "
                                         "pooling, normalize, tokenize_kwargs, return_tensors$"):
        pipeline("feature-extraction", model=tmp_path / "missing", truncation=True)
