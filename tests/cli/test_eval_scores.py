"""`neurallayers eval`: the loss it prints, against a plain computation, and what it refuses to score."""

from pathlib import Path

from nl_cli_helpers import assert_user_error, in_process


def test_eval_of_a_masked_lm_with_no_token_to_mask_refuses(tmp_path: Path, monkeypatch):
    """A corpus whose windows hold only special tokens (never masked) gave an empty mean, printed as a perfect score:
    "masked tokens scored: 0  loss: 0.0000  perplexity: 1.00"."""
    import torch

    from neurallayers import ModelConfig, Tokenizer, build_model
    from neurallayers.interop.hf import save_hf

    tokenizer = Tokenizer.load("gpt2").with_mask_token()
    cfg = ModelConfig.from_name("bert-tiny").replace(
        vocab_size=tokenizer.vocab_size,
        block_size=16,
        n_layer=1,
        n_embd=8,
        n_head=2,
        intermediate_size=16,
        head="mlm",
        pad_token_id=None,
    )
    torch.manual_seed(0)
    save_hf(build_model(cfg), tokenizer, tmp_path / "mlm")
    (tmp_path / "eot.txt").write_text("<|endoftext|>" * 40)
    assert tokenizer.encode("<|endoftext|>" * 2) == [tokenizer.eos_id] * 2  # special: never masked
    proc = in_process("eval", "mlm", "--data", "eot.txt", "--no-progress", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "corpus 'eot.txt' (split all): its windows hold only special tokens")
    (tmp_path / "text.txt").write_text("To be, or not to be" + "<|endoftext|>" * 40)  # one token to mask: a loss
    proc = in_process("eval", "mlm", "--data", "text.txt", "--no-progress", cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 0 and "masked tokens scored: " in proc.stdout, proc.stderr
