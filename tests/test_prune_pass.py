"""ChannelPrunePass (surgeon/passes/prune.py): it decides which channel classes go and changes
no shape."""

from __future__ import annotations

from surgeon.options import SlimOptions
from surgeon.passes import ChannelPrunePass, state_of
from tests.helpers import traced_with_state


def test_prune_pass_marks_without_changing_shapes():
    gm, x = traced_with_state()
    before = {k: v.shape for k, v in gm.state_dict().items()}
    res = ChannelPrunePass(SlimOptions(0.5))(gm)
    assert res.modified and res.stats["removed_classes"] == 3 + 8 + 60 + 42
    assert state_of(gm).n_removed() == 3 + 8 + 60 + 42
    assert {k: v.shape for k, v in gm.state_dict().items()} == before
    again = ChannelPrunePass(SlimOptions(0.5))(gm)
    assert not again.modified and again.stats["removed_classes"] == 0
