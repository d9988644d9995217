"""KANSpec: the config's `kan` section as a validated value; bad input names the field."""

import pytest

import kanjax.llama.kanify
from kanjax.llama.kan_spec import KANSpec


def test_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="kan.targets: unknown target 'ffn'"):
        KANSpec(targets=("ffn",))
    with pytest.raises(ValueError, match="kan.strategy"):
        KANSpec(targets=("all",), strategy="stacked")
    with pytest.raises(ValueError, match="kan.layers"):
        KANSpec(targets=("all",), layers="first:2")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['degre'\]"):
        KANSpec.from_dict({"targets": ["all"], "degre": 3})
    with pytest.raises(ValueError, match="param_match"):
        KANSpec(targets=("all",), init="from_linear", param_match="width")
    with pytest.raises(ValueError, match="outside a 3-block model"):
        KANSpec(targets=("all",), layers=[5]).layer_indices(3)
    with pytest.raises(ValueError):
        KANSpec(targets=("all",), basis="wavelet")


def test_groups_expand_in_model_order_and_the_dict_form_round_trips():
    spec = KANSpec(targets=("down", "attn"), layers="last:2", basis="jacobi", basis_params={"alpha": 0.5, "beta": 1})
    assert spec.targets == ("q", "k", "v", "o", "down")
    assert spec.layer_indices(5) == (3, 4) and KANSpec(layers=[-1, 0, 0]).layer_indices(4) == (0, 3)
    assert KANSpec.from_dict(spec.to_dict()) == spec
    assert KANSpec.from_dict(KANSpec.config_defaults()) == KANSpec()
    from kanjax.kanify import KANSpec as old_path  # the public name kanjax.kanify.KANSpec stays

    assert old_path is KANSpec and kanjax.KANSpec is KANSpec
