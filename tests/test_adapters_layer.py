"""The LoRA layer of the adapter family (agents/adapters/layer.py): the peft file format in both directions (GPT-2's
Conv1D and plain Linear layers), an exactly zero initial update, a frozen base, merge / unmerge, LoRA-FTN's component
mask (002_b6d509c9f1140765.txt, Theorem D.1) and the errors for bad input.

Tolerances. Equalities that hold by construction are exact (``torch.equal``): a zero B, a zero mask and a masked
gradient multiply by exact zeros. Comparisons of two computations of the same float32 value use absolute tolerances:
1e-5 on logits of order 1 (peft and these layers may sum the base and the update, or the merged weight, in different
orders; float32 rounding is ~1e-7 per operation, a few dozen accumulate) and 1e-6 on weights of order 0.1 after a
merge and unmerge ((W + dW) - dW rounds W at ~1e-8).

The peft round trips need the ``adapters`` extra (peft, transformers, safetensors) and are skipped without it.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from agents.adapters import (LoRALayer, adapted_layers, adapter_parameters, adapter_state_dict, inject_adapters,
                             load_adapter_state_dict, load_peft, save_peft, set_component_mask)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's

LOGITS_ATOL = 1e-5  # float32 logits of order 1 computed in two summation orders
WEIGHT_ATOL = 1e-6  # float32 weights of order 0.1 after adding and subtracting an update of order 0.1


def mlp() -> tuple[nn.Module, list[str], torch.Tensor]:
    """A plain Linear model, the names of two of its three Linear layers, an input batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    return model, ["0", "2"], torch.randn(4, 6, generator=torch.Generator().manual_seed(1))


def gpt2() -> tuple[nn.Module, list[str], torch.Tensor]:
    """A tiny random GPT-2 (Conv1D projections), its attention QKV projections' name, a batch of token ids."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0,
                                     eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    return model, ["c_attn"], torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=["mlp", "gpt2"])
def case(request):
    return {"mlp": mlp, "gpt2": gpt2}[request.param]()


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def randomize_b(model: nn.Module, std: float = 0.1, seed: int = 2) -> None:
    """Non-zero B in every adapter (ours: ``...lora_B``; peft's: ``...lora_B.default.weight``), so that the adapters
    change the output and a lost or misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def is_conv1d_case(targets: list[str]) -> bool:
    return targets == ["c_attn"]


# ---------------------------------------------------------------------------------------------- the peft format
def test_our_saved_adapters_load_in_peft_with_equal_logits(case, tmp_path):
    peft = pytest.importorskip("peft")
    base, targets, x = case
    ours = copy.deepcopy(base)
    layers = inject_adapters(ours, targets, rank=4, alpha=8)
    randomize_b(ours)
    save_peft(ours, tmp_path, base_model_name_or_path="tiny")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]  # no temp
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is is_conv1d_case(targets) and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == list(layers)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    ours_out, theirs_out, base_out = outputs(ours, x), outputs(theirs, x), outputs(base, x)
    # peft's own init has B = 0: logits away from the base's show that it loaded our tensors
    assert (ours_out - base_out).abs().max() > 1e-2
    torch.testing.assert_close(theirs_out, ours_out, atol=LOGITS_ATOL, rtol=0)


def test_peft_saved_adapters_load_in_ours_with_equal_logits(case, tmp_path):
    peft = pytest.importorskip("peft")
    base, targets, x = case
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=is_conv1d_case(targets))
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    randomize_b(theirs)
    theirs.save_pretrained(str(tmp_path))
    ours = copy.deepcopy(base)
    inject_adapters(ours, targets, rank=4, alpha=8)
    load_peft(ours, tmp_path)
    ours_out, theirs_out = outputs(ours, x), outputs(theirs, x)
    assert (theirs_out - outputs(base, x)).abs().max() > 1e-2
    torch.testing.assert_close(ours_out, theirs_out, atol=LOGITS_ATOL, rtol=0)


class Nested(nn.Module):
    """Two Linear layers whose names end alike: ``fc`` and ``block.fc``."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.block = nn.Module()
        self.block.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.block.fc(self.fc(x))


def test_save_peft_targets_exactly_the_adapted_layers_when_names_end_alike(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = Nested()
    ours = copy.deepcopy(base)
    ours.fc = LoRALayer(ours.fc, rank=2, alpha=2)  # built by hand: no target pattern adapts "fc" alone
    randomize_b(ours)
    save_peft(ours, tmp_path)
    # by peft's rule a target "fc" would reach block.fc too, so the config names the one layer exactly
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] != ["fc"]
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    assert isinstance(theirs.base_model.model.block.fc, nn.Linear)  # not wrapped by peft
    x = torch.randn(3, 4)
    torch.testing.assert_close(outputs(theirs, x), outputs(ours, x), atol=LOGITS_ATOL, rtol=0)


def test_the_peft_format_refuses_pools_of_components_and_masks(tmp_path):
    model, targets, _ = mlp()
    inject_adapters(model, targets, rank=2, alpha=2, components=4)
    with pytest.raises(ValueError, match="plain LoRA"):
        save_peft(model, tmp_path)
    model, targets, _ = mlp()
    inject_adapters(model, targets, rank=2, alpha=2)
    set_component_mask(model, torch.zeros(1))
    with pytest.raises(ValueError, match="mask"):
        save_peft(model, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_load_peft_refuses_another_rank_and_changes_nothing(tmp_path):
    pytest.importorskip("safetensors")
    model, targets, _ = mlp()
    inject_adapters(model, targets, rank=2, alpha=2)
    randomize_b(model)
    save_peft(model, tmp_path)
    other, _, _ = mlp()
    inject_adapters(other, targets, rank=3, alpha=2)
    before = adapter_state_dict(other)
    with pytest.raises(ValueError, match="rank, alpha"):
        load_peft(other, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in adapter_state_dict(other).items())


# ---------------------------------------------------------------------------------------------- init and freezing
@pytest.mark.parametrize("components", [1, 4])
def test_the_initial_update_is_exactly_zero(case, components):
    base, targets, x = case
    model = copy.deepcopy(base)
    inject_adapters(model, targets, rank=2, alpha=4, components=components)
    assert all(layer.lora_A.abs().sum() > 0 for layer in adapted_layers(model).values())  # A is not zero
    assert torch.equal(outputs(model, x), outputs(base, x))


def test_lora_a_is_initialised_like_peft():
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(100, 3), rank=8, alpha=8, components=4)
    bound = 1 / 100 ** 0.5  # kaiming_uniform_(a=sqrt(5)) on fan_in=100
    assert layer.lora_A.shape == (32, 100) and layer.lora_B.shape == (3, 32)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.9 * bound
    assert torch.equal(layer.lora_B, torch.zeros(3, 32))
    gaussian = LoRALayer(nn.Linear(100, 300), rank=8, alpha=8, init_b_std=0.01)
    assert 0.009 < gaussian.lora_B.std() < 0.011  # 2,400 draws: the sample std is within ~2% of 0.01


def test_the_base_is_frozen_and_unchanged_by_training(case):
    base, targets, x = case
    model = copy.deepcopy(base)
    inject_adapters(model, targets, rank=2, alpha=4, dropout=0.1)
    trainable = {id(p) for p in adapter_parameters(model)}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if id(p) not in trainable}
    assert frozen and all(not p.requires_grad for name, p in model.named_parameters() if name in frozen)
    adapters_before = adapter_state_dict(model)
    # every parameter offered, with weight decay: only the freezing keeps the base out of the step
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        optimiser.zero_grad()
        out = model(x)
        getattr(out, "logits", out).pow(2).mean().backward()
        optimiser.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[name], value) for name, value in frozen.items())
    assert all(not torch.equal(adapters_before[k], v) for k, v in adapter_state_dict(model).items())


# ---------------------------------------------------------------------------------------------- merge / unmerge
def test_merge_equals_the_unmerged_forward_and_unmerge_restores_the_base(case):
    base, targets, x = case
    model = copy.deepcopy(base)
    layers = inject_adapters(model, targets, rank=2, alpha=4, components=4, init_b_std=0.1)
    set_component_mask(model, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    weights = {name: layer.base.weight.detach().clone() for name, layer in layers.items()}
    unmerged = outputs(model, x)
    for layer in layers.values():
        layer.merge()
    assert all(not torch.equal(layer.base.weight, weights[name]) for name, layer in layers.items())
    torch.testing.assert_close(outputs(model, x), unmerged, atol=LOGITS_ATOL, rtol=0)
    with pytest.raises(RuntimeError, match="unmerge"):
        set_component_mask(model, None)  # a merged layer refuses a new mask
    with pytest.raises(RuntimeError, match="already merged"):
        next(iter(layers.values())).merge()
    for layer in layers.values():
        layer.unmerge()
    for name, layer in layers.items():
        torch.testing.assert_close(layer.base.weight, weights[name], atol=WEIGHT_ATOL, rtol=0)
    torch.testing.assert_close(outputs(model, x), unmerged, atol=LOGITS_ATOL, rtol=0)


def test_merge_refuses_a_relaxed_mask():
    layer = LoRALayer(nn.Linear(4, 4), rank=1, alpha=1, components=4)
    layer.set_mask(torch.tensor([1.0, 0.5, 0.0, 1.0]))
    with pytest.raises(ValueError, match="relaxed"):
        layer.merge()
    assert not layer.merged
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


# ---------------------------------------------------------------------------------------------- components and mask
def pool_model(components: int = 4) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    base, targets, x = mlp()
    model = copy.deepcopy(base)
    inject_adapters(model, targets, rank=2, alpha=4, components=components, init_b_std=0.1)
    return model, base, x


def test_masked_components_get_exactly_zero_gradient():
    """Theorem D.1: a component whose mask entry is 0 gets no gradient in A (its rows) nor B (its columns)."""
    model, _, x = pool_model()
    set_component_mask(model, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    model(x).pow(2).sum().backward()
    for layer in adapted_layers(model).values():
        for j, active in enumerate([True, False, True, False]):
            rows = layer.component_slice(j)
            grads = (layer.lora_A.grad[rows], layer.lora_B.grad[:, rows])
            if active:
                assert all(g.abs().sum() > 0 for g in grads)
            else:
                assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_one_mask_reaches_every_layer_and_all_zeros_is_the_base():
    model, base, x = pool_model()
    assert (outputs(model, x) - outputs(base, x)).abs().max() > 1e-3  # the Gaussian B changes the output
    set_component_mask(model, torch.zeros(4))
    assert torch.equal(outputs(model, x), outputs(base, x))  # would differ if one layer had missed the mask
    set_component_mask(model, None)
    assert all(layer.mask is None for layer in adapted_layers(model).values())


def test_a_relaxed_mask_scales_each_component_and_carries_a_gradient():
    """y = base(x) + scaling * sum_j m_j B_j A_j x, written out per component."""
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)
    layer = LoRALayer(linear, rank=2, alpha=6, components=3, init_b_std=0.5)
    mask = torch.tensor([0.25, 1.0, 0.0], requires_grad=True)
    layer.set_mask(mask)
    x = torch.randn(7, 5)
    y = layer(x)
    expected = linear(x) + 3.0 * sum(
        mask[j] * x @ layer.lora_A[layer.component_slice(j)].T @ layer.lora_B[:, layer.component_slice(j)].T
        for j in range(3))
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)  # entries of order 1, one reordered sum
    y.sum().backward()
    assert torch.count_nonzero(mask.grad) == 3  # the configurer's gradient, to every entry, even the zero one


def test_bad_masks_are_refused_before_any_layer_changes():
    model, _, _ = pool_model()
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        set_component_mask(model, torch.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_component_mask(model, torch.tensor([1.0, 2.0, 0.0, 0.0]))
    assert all(layer.mask is None for layer in adapted_layers(model).values())
    four, two = (LoRALayer(nn.Linear(3, 3), rank=1, alpha=1, components=h) for h in (4, 2))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        set_component_mask([four, two], torch.ones(4))  # fits the first layer, not the second
    assert four.mask is None


def test_dropout_drops_the_adapter_input_only_from_the_layer_generator():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    layer = LoRALayer(linear, rank=2, alpha=2, dropout=0.5, init_b_std=0.5,
                      generator=torch.Generator().manual_seed(7))
    x = torch.randn(5, 6)
    replay = copy.deepcopy(layer.generator)  # the state the forward pass will draw from
    keep = torch.rand(x.shape, generator=replay) >= 0.5
    expected = linear(x) + (x * keep / 0.5) @ layer.lora_A.T @ layer.lora_B.T  # the base sees x undropped
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)  # entries of order 1, one reordered sum
    layer.eval()
    torch.testing.assert_close(layer(x), linear(x) + x @ layer.lora_A.T @ layer.lora_B.T, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- injection and state
def test_injection_replaces_in_module_order_and_names_candidates_on_no_match():
    model, targets, _ = mlp()
    layers = inject_adapters(model, ["2", "0"], rank=2, alpha=2)
    assert list(layers) == ["0", "2"] and isinstance(model[0], LoRALayer) and isinstance(model[4], nn.Linear)
    fresh, _, _ = mlp()
    with pytest.raises(ValueError, match=r"no module .* matches .*'0', '2', '4'"):
        inject_adapters(fresh, ["c_attn"], rank=2, alpha=2)
    with pytest.raises(TypeError, match="Tanh"):
        inject_adapters(fresh, ["1"], rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank"):
        inject_adapters(fresh, ["0"], rank=0, alpha=2)


def test_adapter_state_round_trip_and_a_wrong_shape_changes_nothing():
    model, base, x = pool_model()
    other, _, _ = pool_model()
    randomize_b(other, seed=5)
    load_adapter_state_dict(other, adapter_state_dict(model))
    assert torch.equal(outputs(other, x), outputs(model, x))
    before = adapter_state_dict(model)
    # new values in every entry, so that a partial load before the error would show
    changed = {k: v + 1.0 for k, v in before.items()}
    with pytest.raises(ValueError, match="shape"):
        load_adapter_state_dict(model, {**changed, "2.lora_B": torch.zeros(16, 7)})  # the last entry is wrong
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state_dict(model, {k: v for k, v in changed.items() if k != "2.lora_B"})
    assert all(torch.equal(before[k], v) for k, v in adapter_state_dict(model).items())
