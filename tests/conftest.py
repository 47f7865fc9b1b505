import pytest
import torch

from archfit import zoo

SHARED = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's compile cache; subprocesses inherit this too."""
    import os

    os.environ["ARCHFIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("archfit-cache"))
    os.environ.pop("ARCHFIT_CACHE", None)


@pytest.fixture(scope="session")
def tiny_bert():
    return zoo.build("bert-base", tiny=True)


@pytest.fixture(scope="session")
def tiny_resnet18():
    return zoo.build("resnet18", tiny=True)


@pytest.fixture(scope="session")
def mlp_custom():
    return zoo.build("mlp-custom-op", tiny=True)


def flat_outputs(out):
    return torch.utils._pytree.tree_flatten(out)[0]


def assert_close_to_eager(model, compiled, inputs, precision="fp32"):
    """Compiled outputs equal eager PyTorch within archfit's documented tolerance."""
    from archfit import TOLERANCES
    from archfit.capture import normalize_inputs

    atol, rtol = TOLERANCES[precision]
    args, kwargs = normalize_inputs(inputs)
    with torch.no_grad():
        want = flat_outputs(model(*args, **kwargs))
        got = flat_outputs(compiled(*args, **kwargs))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        bound = atol + rtol * w.abs().max().item()
        assert (g - w).abs().max().item() <= bound
