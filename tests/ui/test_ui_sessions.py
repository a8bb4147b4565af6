"""Two browser sessions generating at once: each gets its own text and status, never the other's tokens."""

from __future__ import annotations

from neurallayers.generation import GenerationConfig, generate


def test_two_sessions_at_once_keep_their_own_streams(playground, tiny):
    from gradio_client import Client

    model, tok = tiny
    first, second = Client(playground, verbose=False), Client(playground, verbose=False)
    # prompt, max new tokens, temperature, top-k, top-p, min-p, repetition penalty, seed, stop strings
    jobs = [first.submit("the quick", 40, 0.9, 0, 1.0, 0.0, 1.0, 3, "", api_name="/generate"),
            second.submit("pack my", 30, 0.0, 0, 1.0, 0.0, 1.0, -1, "", api_name="/generate")]
    results = [job.result(timeout=120) for job in jobs]
    wants = [generate(model, tok, "the quick", GenerationConfig(max_new_tokens=40, temperature=0.9, seed=3))[0],
             generate(model, tok, "pack my", GenerationConfig(max_new_tokens=30, temperature=0))[0]]
    for job, (text, status), want in zip(jobs, results, wants, strict=True):
        assert text == want.text and status.startswith(f"{len(want.token_ids)} tokens in")
        updates = [t for t, _ in job.outputs()]  # each update grows the session's own text
        assert all(want.text.startswith(t) for t in updates)
