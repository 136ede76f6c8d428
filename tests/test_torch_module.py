"""Any nn.Module through a factory spec: loading from a file or a module path, hook points
named by module paths, and a ModelError naming the culprit for every broken spec."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.errors import HookError, ModelError
from engine.models.digits_zoo import DigitsZooModel, ZooConfig, build
from engine.models.torch_module import TorchModuleAdapter, load_factory

NET_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        input_shape = (6,)

        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
            self.layers = nn.ModuleList([nn.Linear(5, 4), nn.Linear(4, 3)])
            self.out = nn.Linear(3, 2)

        def forward(self, x):
            x = self.encoder(x)
            for layer in self.layers:
                x = torch.relu(layer(x))
            return self.out(x)


    def make():
        torch.manual_seed(0)
        return Net()


    def make_plain():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


    def make_adapter():
        from engine.models.digits_zoo import DigitsZooModel, ZooConfig, build
        return DigitsZooModel(build(ZooConfig(width=4, depth=1)), ZooConfig(width=4, depth=1))


    def make_wrong():
        return 42


    def make_broken():
        raise RuntimeError("no weights here")


    not_callable = 7
''')

EXPECTED_HOOKS = ["encoder", "encoder.0", "encoder.1", "layers.0", "layers.1", "out"]


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    path = tmp_path / "user_net.py"
    path.write_text(NET_SOURCE)
    return path


def test_load_from_file(net_file: Path) -> None:
    model = load_factory(f"{net_file}:make")
    assert isinstance(model, TorchModuleAdapter)
    assert model.model_id == f"{net_file}:make" and model.kind == "module"
    assert model.hook_points() == EXPECTED_HOOKS
    paths = [n for n, m in model.module.named_modules() if n and not isinstance(m, nn.ModuleList)]
    assert model.hook_points() == paths


def test_forward_rows_match_the_module(net_file: Path) -> None:
    model = load_factory(f"{net_file}:make")
    items = [np.linspace(-1, 1, 6) * k for k in range(5)]
    batch = model.make_batch(items)
    assert batch.inputs["x"].dtype == torch.float32 and batch.inputs["x"].shape == (5, 6)
    rows = model.forward(batch, ["encoder.1", "layers.0", "out"])
    assert {k: tuple(v.shape) for k, v in rows.items()} == {
        "encoder.1": (5, 5), "layers.0": (5, 4), "out": (5, 2)}
    with torch.inference_mode():
        torch.testing.assert_close(rows["out"], model.module(batch.inputs["x"]))
    assert model.hook_dims(["encoder", "out"]) == {"encoder": 5, "out": 2}


def test_forward_stops_early(net_file: Path) -> None:
    model = load_factory(f"{net_file}:make")
    calls = []
    model.module.out.register_forward_hook(lambda *args: calls.append(1))
    model.forward(model.example_batch(), ["layers.0"])
    assert calls == []


def test_load_from_module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "userpkg_latentlab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(NET_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_factory("userpkg_latentlab.nets:make_plain")
    assert model.model_id == "userpkg_latentlab.nets:make_plain"
    assert model.hook_points() == ["0", "1", "2"]
    with pytest.raises(ModelError, match="input_shape"):
        model.example_batch()
    rows = model.forward(model.make_batch([np.ones(3), np.zeros(3)]), ["1"])
    assert rows["1"].shape == (2, 4) and (rows["1"] >= 0).all()


def test_a_factory_returning_an_adapter_is_used_as_is(net_file: Path) -> None:
    model = load_factory(f"{net_file}:make_adapter")
    assert isinstance(model, DigitsZooModel)
    assert model.hook_points() == ["blocks.0.hook_post", "logits"]


def test_input_shape_from_constructor_or_module() -> None:
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(ModelError, match="input_shape"):
        TorchModuleAdapter(module).example_batch()
    adapter = TorchModuleAdapter(module, input_shape=(1, 5, 5))
    assert adapter.hook_dims(["0", "1"]) == {"0": 2 * 3 * 3, "1": 18}
    module.input_shape = (1, 4, 4)
    assert TorchModuleAdapter(module).example_batch().inputs["x"].shape == (1, 1, 4, 4)


def test_wraps_a_zoo_network_with_its_module_paths() -> None:
    adapter = TorchModuleAdapter(build(ZooConfig(arch="cnn", width=3, depth=2)), input_shape=(1, 8, 8))
    assert adapter.hook_points() == ["blocks.0", "blocks.0.0", "blocks.0.1", "blocks.1",
                                     "blocks.1.0", "blocks.1.1", "head"]
    assert adapter.hook_dims(["blocks.1"]) == {"blocks.1": 3 * 64}


class _WithSpare(nn.Module):
    """A net holding a layer its forward() never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(2, 2)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_a_module_never_called_gives_a_hook_error() -> None:
    adapter = TorchModuleAdapter(_WithSpare(), input_shape=(2,))
    with pytest.raises(HookError, match="unused"):
        adapter.forward(adapter.example_batch(), ["unused"])
    with pytest.raises(HookError, match="nothere"):
        adapter.forward(adapter.example_batch(), ["nothere"])


@pytest.mark.parametrize(("attr", "message"), [
    ("missing", "no attribute 'missing'"),
    ("not_callable", "not_callable is not callable"),
    ("make_wrong", "make_wrong\\(\\) returned a int"),
    ("make_broken", "make_broken\\(\\) raised RuntimeError: no weights here"),
])
def test_bad_factories_name_the_file_and_attribute(net_file: Path, attr: str, message: str) -> None:
    with pytest.raises(ModelError, match=message) as info:
        load_factory(f"{net_file}:{attr}")
    assert str(net_file) in str(info.value)


def test_missing_file_and_module_are_named(tmp_path: Path) -> None:
    gone = tmp_path / "gone.py"
    with pytest.raises(ModelError, match="gone.py does not exist"):
        load_factory(f"{gone}:make")
    with pytest.raises(ModelError, match="no_such_pkg_latentlab"):
        load_factory("no_such_pkg_latentlab.nets:make")
    with pytest.raises(ModelError, match="'make'"):
        load_factory("json:make")
    with pytest.raises(ModelError, match="file.py:factory"):
        load_factory("just_a_name")


def test_a_file_that_fails_to_import_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad_net.py"
    bad.write_text("import torch\nraise ValueError('typo in the model file')\n")
    with pytest.raises(ModelError, match="bad_net.py failed to import.*typo"):
        load_factory(f"{bad}:make")
