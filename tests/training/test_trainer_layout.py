"""trainer.py keeps fit() and the loop; its parts live in modules beside it. The names callers import from trainer
stay there, and importing it stays light: the optional extras and the model, data and generation code load only
when a run needs them."""

import subprocess
import sys

from nl_train_helpers import REPO


def test_trainer_reexports_the_names_callers_import_from_it():
    from neurallayers import training
    from neurallayers.training import losses, trainer

    assert (trainer.mean_loss, trainer.perplexity, trainer.perplexity_text) == (
        losses.mean_loss, losses.perplexity, losses.perplexity_text)
    assert (training.fit, training.TrainResult) == (trainer.fit, trainer.TrainResult)
    assert trainer.LOCK == ".train.lock"
    assert set(trainer.__all__) == {"LOCK", "TrainResult", "fit", "mean_loss", "perplexity", "perplexity_text"}


def test_importing_the_trainer_loads_no_extra_and_no_model_or_generation_code():
    lazy = ["transformers", "matplotlib", "tensorboard", "mlflow", "wandb", "fastapi", "neurallayers.models",
            "neurallayers.data", "neurallayers.generation", "neurallayers.interop"]
    code = ("import sys, neurallayers.training.trainer\n"
            f"print([m for m in {lazy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"
