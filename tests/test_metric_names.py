"""echorl/metric_names.py: every name the stage emits is listed with its meaning, the actor prefix is
verl's own rule, and rows with the names of older runs read under the current ones."""

from __future__ import annotations

import pytest
import torch
from verl.utils.py_functional import rename_dict

from echorl import EchoConfig, run_echo_stage
from echorl import metric_names as M

N = 198  # a boundary token of boundary="fixed"
ROWS = [[5, 6, N, 7, 8, N, 9], [5, N, 7, N, 9, 9, 0], [5, 6, 7, 0, 0, 0, 0], [5, N, 6, 6, 0, 0, 0]]
LENS = [7, 6, 3, 4]


def _stage(**kw):
    resp = torch.tensor(ROWS)
    mask = (torch.arange(7) < torch.tensor(LENS)[:, None]).long()
    ent = torch.ones(4, 7)
    return run_echo_stage(resp, mask, ent, torch.tensor([1.0, 1.0, 1.0, 0.0]), ["a", "a", "b", "b"],
                          EchoConfig(boundary="fixed", preset="degenerate"), advantages=torch.zeros(4, 7),
                          num_minibatches=1, **kw)


def test_the_stage_emits_exactly_the_listed_names():
    assert set(_stage().metrics) == set(M.STAGE)
    kept = set(_stage(echo_only=torch.tensor([False, True, False, False])).metrics)
    assert kept == set(M.STAGE) | {M.KEPT_ROWS, M.KEPT_CLIP_TOKENS, M.CLIPS_FROM_KEPT}


def test_every_name_has_a_meaning():
    names = {v for k, v in vars(M).items() if k.isupper() and isinstance(v, str) and "/" in v[:-1]}
    loss_side = {M.LUFFY_OFF_PG_LOSS, M.LUFFY_OFF_PROB_SUM, M.LUFFY_OFF_TOKENS, M.LUFFY_OFF_PROB, M.UFT_HINT_NLL, M.RL_ZVP_POS_FRAC,
                 M.RL_ZVP_NEG_FRAC, M.FORKING_KEPT_FRAC}
    assert names - loss_side <= set(M.MEANING)  # the loss's own names are logged with actor/ (below)
    assert {M.actor_metric_name(k) for k in loss_side} <= set(M.MEANING)
    assert all(M.MEANING.values())


@pytest.mark.parametrize("key", ["pg_loss", "actor/pg_loss", "luffy/off_pg_loss", "uft/hint_nll", "echo/loss"])
def test_actor_names_follow_verls_rename_dict_except_the_echorl_loss(key):
    want = key if key == M.LOSS else next(iter(rename_dict({key: 0.0}, "actor/")))
    assert M.actor_metric_name(key) == want
    assert M.actor_metric_name("luffy/off_pg_loss") == "actor/luffy/off_pg_loss"


def test_the_studys_gradient_measurements_keep_their_names():
    assert M.actor_metric_name("study/grad_echo_share") == "study/grad_echo_share"


def test_old_rows_read_under_the_current_names():
    old = {"step": 3, "timing/step": 2.5, "timing/echo": 0.25, "timing/update": 1.0, "luffy/off_pg_loss": -0.5,
           "echo/clips": 4.0}
    assert M.canonical(old) == {"step": 3, "timing_s/step": 2.5, "timing_s/echo": 0.25, "timing_s/update_actor": 1.0,
                                "actor/luffy/off_pg_loss": -0.5, "echo/clips": 4.0}
    assert M.canonical({"timing/step": 1.0, "timing_s/step": 2.0}) == {"timing_s/step": 2.0}  # the current name wins
    for new in M.OLD_NAMES.values():
        assert new in M.MEANING or new.startswith(M.TIMING_PREFIX)


def test_echorl_keys_picks_the_echorl_names_only():
    keys = ["echo/clips", "timing_s/echo", "timing_s/step", "actor/pg_loss", "actor/luffy/off_tokens", "uft/hint_prob",
            "reward/mean"]
    assert M.echorl_keys(keys) == {"echo/clips", "timing_s/echo", "actor/luffy/off_tokens", "uft/hint_prob"}


def test_a_boundary_warning_is_a_metric_of_its_step_and_still_warns():
    from echorl.core.clips import reset_boundary_warnings
    from echorl.core.steps import EchoBoundaryWarning

    reset_boundary_warnings()
    resp = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 0]])  # no boundary token anywhere
    args = (resp, torch.ones(2, 4), torch.ones(2, 4), torch.tensor([1.0, 1.0]), ["a", "a"], EchoConfig(boundary="fixed"))
    with pytest.warns(EchoBoundaryWarning, match="no response in this batch contains a boundary token"):
        first = run_echo_stage(*args).metrics
    assert first[M.NO_BOUNDARY_WARNING] == 1.0
    assert M.NO_BOUNDARY_WARNING not in run_echo_stage(*args).metrics  # the core warns once per run
    reset_boundary_warnings()
