"""resume=None means no resume, as transformers' resume_from_checkpoint=None does; a value that is neither a bool nor
a path is refused in one line naming `resume` (None and 0 reached Path() as "expected str, bytes or os.PathLike
object, not NoneType"), before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from nl_train_helpers import step_losses, tiny_run

import neurallayers as nl
from neurallayers.training import fit
from neurallayers.training.resume import resume_target

BAD = [0, 1, 2.5, b"runs/x", ["runs/x"], {"path": "runs/x"}]
SAYS = (r"^resume=.*: must be a path \(a str or pathlib\.Path\) of a checkpoint or run, "
        r"True \(the newest checkpoint\) or False/None \(a fresh run\), got \w+$")


def test_none_trains_afresh_as_false_does(tmp_path):
    """The oracle is resume=False: the same steps and losses, and a second None is refused as a second False is."""
    run = tiny_run(tmp_path, max_steps=3, eval_interval=0, save_interval=3)
    with_false = fit(run, tmp_path / "false", resume=False, progress=False)
    with_none = fit(run, tmp_path / "none", resume=None, progress=False)
    assert (with_none.steps, with_none.stopped_reason) == (with_false.steps, with_false.stopped_reason)
    assert (with_none.steps, with_none.stopped_reason) == (3, "max_steps")
    assert step_losses(tmp_path / "none") == step_losses(tmp_path / "false")
    for resume in (False, None):
        with pytest.raises(ValueError, match="already holds a run; pass --resume"):
            fit(run, tmp_path / "none", resume=resume, progress=False)


def test_the_api_train_takes_none(tmp_path):
    run = tiny_run(tmp_path, max_steps=2, eval_interval=0, save_interval=2)
    result = nl.train(run, tmp_path / "run", resume=None, progress=False)
    assert (result.steps, result.stopped_reason) == (2, "max_steps")


@pytest.mark.parametrize("resume", BAD, ids=repr)
def test_a_resume_that_is_no_bool_or_path_is_refused_by_name(tmp_path, resume):
    run = tiny_run(tmp_path)
    for call in (lambda: fit(run, tmp_path / "a", resume=resume, progress=False),
                 lambda: nl.train(run, tmp_path / "a", resume=resume, progress=False),
                 lambda: resume_target(tmp_path / "a", resume)):
        with pytest.raises(ValueError, match=SAYS):
            call()
    assert not (tmp_path / "a").exists()  # refused before anything was written


@pytest.mark.parametrize("resume", ["", "  "])
def test_an_empty_resume_path_is_refused(tmp_path, resume):
    # Path("") is the current folder: it was read as a checkpoint path there
    with pytest.raises(ValueError, match=r"^resume='\s*': name a checkpoint or run folder"):
        fit(tiny_run(tmp_path), tmp_path / "a", resume=resume, progress=False)


def test_a_path_still_resumes(tmp_path):
    run = tiny_run(tmp_path, max_steps=4, eval_interval=0, save_interval=2)
    fit(run, tmp_path / "run", until_step=2, progress=False)
    result = fit(run, tmp_path / "run", resume=Path(tmp_path / "run/checkpoints/step-2"), progress=False)
    assert (result.steps, result.stopped_reason) == (4, "max_steps")
