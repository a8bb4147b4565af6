"""The launched playground through gradio_client: streamed generation, the attention tab, clear errors."""

from __future__ import annotations

import base64

import pytest

from neurallayers.generation import GenerationConfig, generate

# prompt, max new tokens, temperature, top-k, top-p, min-p, repetition penalty, seed, stop strings
GREEDY = ("the quick", 40, 0.0, 0, 1.0, 0.0, 1.0, -1, "")


@pytest.fixture(scope="module")
def client(playground):
    from gradio_client import Client

    return Client(playground, verbose=False)


def test_listens_on_localhost(playground):
    assert playground.startswith("http://127.0.0.1:")


def test_generate_streams_the_text_of_generate(client, tiny):
    model, tok = tiny
    job = client.submit(*GREEDY, api_name="/generate")
    text, status = job.result(timeout=60)
    (want,) = generate(model, tok, "the quick", GenerationConfig(temperature=0, max_new_tokens=40))
    assert text == want.text and status.startswith(f"{len(want.token_ids)} tokens in")
    updates = [t for t, _ in job.outputs()]
    assert len(updates) > 5 and all(b.startswith(a) for a, b in zip(updates, updates[1:], strict=False))
    # every sampling control reaches the generator: seeded sampling gives generate()'s text, a stop string cuts it
    sampled, _ = client.predict("the quick", 30, 0.9, 10, 0.95, 0.05, 1.2, 11, "", api_name="/generate")
    cfg = GenerationConfig(max_new_tokens=30, temperature=0.9, top_k=10, top_p=0.95, min_p=0.05,
                           repetition_penalty=1.2, seed=11)
    (want,) = generate(model, tok, "the quick", cfg)
    assert sampled == want.text
    stop_at = want.text[5:7]
    cut, _ = client.predict("the quick", 30, 0.9, 10, 0.95, 0.05, 1.2, 11, f"zz\n{stop_at}", api_name="/generate")
    assert cut == want.text[:want.text.index(stop_at)]
    # every control but the prompt has a default: the API leaves them out as it may any optional one
    short = client.predict("the quick", 40, 0, api_name="/generate")[0]
    assert short == generate(model, tok, "the quick", GenerationConfig(temperature=0, max_new_tokens=40))[0].text


def test_attention_tab_returns_a_png_of_the_heatmaps(client):
    plot = client.predict("the lazy dog", "all", api_name="/attention")
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png;base64,")
    png = base64.b64decode(plot["plot"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize(("args", "api", "message"), [
    (("", *GREEDY[1:]), "/generate", "The prompt is empty"),
    (("ab" * 60, *GREEDY[1:]), "/generate", "The prompt has 120 tokens but the model's context length is 96"),
    ((*GREEDY[:7], -4, ""), "/generate", "Seed must be -1"),
    (("a" * 80, "all"), "/attention", "up to 64 tokens; this text has 80"),
    (("the dog", "7"), "/attention", "7 is not in the list of choices"),
])
def test_bad_input_gets_a_clear_message_and_the_app_keeps_working(client, args, api, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name=api)
    text, _ = client.predict(*GREEDY, api_name="/generate")
    assert text


@pytest.mark.parametrize(("change", "message"), [
    ({2: "hot"}, "Temperature must be a number, got 'hot'"),  # was "input component at index 2 (a `slider`..."
    ({7: "x"}, "Seed must be a number, got 'x'"),
    ({5: 1.5}, "min_p=1.5: must be in \\[0, 1\\]"),  # was Gradio's "Value 1.5 is greater than maximum value 0.99."
    ({1: 10**9}, "Max new tokens must be at most 96 \\(the model's context length\\), got 1000000000"),
    ({0: ""}, "The prompt is empty"),
])
def test_bad_controls_are_named_without_a_server_traceback(client, capfd, change, message):
    from gradio_client.exceptions import AppError

    args = [change.get(i, v) for i, v in enumerate(GREEDY)]
    capfd.readouterr()
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/generate")
    assert "Traceback" not in capfd.readouterr().err  # a user's mistake is theirs to see, not the server log's


def test_controls_start_at_the_model_recommendation(tiny):
    pytest.importorskip("gradio", reason="the web playground needs the ui extra (gradio)")
    import gradio as gr

    from neurallayers.ui import build_app

    app = build_app(*tiny, defaults={"temperature": 0.6, "top_k": 7, "top_p": 0.9, "repetition_penalty": 1.1})
    sliders = {b.label: b.value for b in app.blocks.values() if isinstance(b, gr.Slider)}
    assert sliders["Temperature (0 = greedy)"] == 0.6 and sliders["Top-k (0 = off)"] == 7
    assert sliders["Top-p (1 = off)"] == 0.9 and sliders["Repetition penalty (1 = off)"] == 1.1
    assert sliders["Min-p (0 = off)"] == 0.0
    notes = [b.value for b in app.blocks.values() if isinstance(b, gr.Markdown) and b.value]
    assert any("generation_config.json: temperature=0.6, top_k=7" in n for n in notes)


def test_controls_start_at_a_recommendation_outside_their_usual_range(tiny):
    """top_k=1000 started at 200 and repetition_penalty=2.5 at 2: other text than generate's at the file's values."""
    pytest.importorskip("gradio", reason="the web playground needs the ui extra (gradio)")
    import gradio as gr

    from neurallayers.ui import build_app

    app = build_app(*tiny, defaults={"top_k": 1000, "repetition_penalty": 2.5, "temperature": 3.0})
    sliders = {b.label: b for b in app.blocks.values() if isinstance(b, gr.Slider)}
    assert sliders["Top-k (0 = off)"].value == 1000 and sliders["Top-k (0 = off)"].maximum == 1000
    assert sliders["Repetition penalty (1 = off)"].value == 2.5 and sliders["Temperature (0 = greedy)"].value == 3.0


def test_attention_waits_for_a_generation_in_progress(tiny):
    """One model, one request at a time: Gradio queued each event on its own, so an attention request from another
    tab ran its forward beside the generation's."""
    import threading
    import time

    import torch
    from gradio_client import Client
    from nl_ui_helpers import running_playground

    from neurallayers.models.decoder import DecoderLM

    model, tok = tiny
    lock, active, most = threading.Lock(), [0], [0]

    class Counted(DecoderLM):  # counts the forwards running at once; 20 ms each keeps the generation going a while
        def forward(self, *args, **kwargs):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                time.sleep(0.02)
                return super().forward(*args, **kwargs)
            finally:
                with lock:
                    active[0] -= 1

    counted = Counted(model.config).eval()
    with torch.no_grad():
        counted.load_state_dict(model.state_dict())
    with running_playground(counted, tok) as url:
        client = Client(url, verbose=False)
        job = client.submit("the quick", 60, *GREEDY[2:], api_name="/generate")
        deadline = time.monotonic() + 30
        while not job.outputs() and time.monotonic() < deadline:  # the generation is streaming
            time.sleep(0.01)
        client.predict("the lazy dog", "all", api_name="/attention")
        assert job.result(timeout=60)[1].startswith("60 tokens in")
    assert most[0] == 1


def test_a_generation_that_fails_midway_ends_its_generating_status(tiny):
    """The model failed after some tokens (a GPU out of memory): the page's status line said "generating... N
    tokens" for good under the error's toast, in both tabs. The stream's last update now says it failed."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from nl_ui_helpers import failing_copy, running_playground

    model, tok = tiny
    broken = failing_copy(model, fail_at=5)
    with running_playground(broken, tok) as url:
        client = Client(url, verbose=False)
        for args, api in ((GREEDY, "/generate"), (("the fox", [], "", "", *GREEDY[1:]), "/chat")):
            broken.calls = 0
            job = client.submit(*args, api_name=api)
            with pytest.raises(AppError, match="CUDA out of memory"):
                job.result(timeout=60)
            *_, (before, _), (text, status) = job.outputs()
            assert text == before and status.startswith("failed after 4 tokens: RuntimeError: CUDA out of memory")
