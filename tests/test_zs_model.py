"""The IIAE of the zero-shot experiment (architecture ``mlp`` of :class:`iiae.IIAE`): the paper's sizes, the
shared objective (MSE and Gaussian likelihood), feature standardisation, save and load, and the model files of
earlier versions."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from iiae import IIAE
from iiae.core.config import LossConfig
from iiae.core.objective import iiae_loss
from iiae.errors import CheckpointError
from iiae.zsbir.baseline import load_model
from iiae.zsbir.config import MLPModelConfig, load_zs_config

DATA = Path(__file__).parent / "data"


def MLPIIAE(config: MLPModelConfig) -> IIAE:  # noqa: N802 - reads as the class it builds
    """The IIAE of the zero-shot config section ``config``."""
    return IIAE(config.model_config())


def test_paper_sizes_and_codes():
    torch.manual_seed(0)
    model = MLPIIAE(MLPModelConfig())
    assert [layer.out_features for layer in model.shared_encoder_x.modules() if isinstance(layer, torch.nn.Linear)] \
        == [512, 256, 128]
    assert model.joint_shared_head[0][0].in_features == 2 * 512
    assert model.joint_shared_head[1].out_features == 128
    assert model.decoder_y.net[0][0].in_features == 128 and model.decoder_y.net[-1].out_features == 512
    x, y = torch.randn(10, 512), torch.randn(10, 512)
    output = model(x, y)
    assert output.posteriors.shared_joint.mean.shape == (10, 64)
    assert output.reconstruction_x.shape == (10, 512)
    model.eval()
    assert model.encode_shared_x(x).shape == (10, 64)
    assert torch.allclose(model.encode_shared_y(y), model.posteriors(x, y).shared_y.mean)


def test_mse_objective_reuses_the_iiae_terms_and_reaches_every_encoder():
    torch.manual_seed(0)
    config = MLPModelConfig(input_dim=12, hidden_dims=[16, 8], code_dim=4, joint_hidden_dim=8, decoder_hidden_dim=8)
    model = MLPIIAE(config)
    x, y = torch.randn(6, 12), torch.randn(6, 12)
    output = model(x, y)
    loss = LossConfig(beta=0.5, lambda_=1.0, reconstruction_weight=10.0, kl_anneal_steps=0.0, reconstruction="mse")
    terms = iiae_loss(x, y, output.reconstruction_x, output.reconstruction_y, output.posteriors, loss, step=0)
    assert "mse_x" in terms and "l1_x" not in terms
    assert terms["mse_y"].item() == pytest.approx((output.reconstruction_y - y).square().mean().item())
    terms["loss"].backward()
    for name in ("exclusive_encoder_x", "exclusive_encoder_y", "shared_encoder_x", "shared_encoder_y",
                 "joint_shared_head", "decoder_x", "decoder_y"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    l1 = iiae_loss(x, y, output.reconstruction_x, output.reconstruction_y, output.posteriors, LossConfig(), step=0)
    assert "l1_x" in l1  # the image models keep their term names


def test_gaussian_reconstruction_is_half_the_squared_error_summed_over_features():
    """The default ZS likelihood: -log N(x; x_hat, I) up to a constant, per pair, averaged over the batch."""
    x, x_hat = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    config = MLPModelConfig(input_dim=3, hidden_dims=[4], code_dim=2, joint_hidden_dim=4, decoder_hidden_dim=4)
    output = MLPIIAE(config)(x, x)
    loss = LossConfig(beta=0.5, lambda_=1.0, reconstruction_weight=1.0, kl_anneal_steps=0.0,
                      reconstruction="gaussian")
    terms = iiae_loss(x, x, x_hat, x_hat, output.posteriors, loss, step=0)
    # pair 1: 0.5 * (0 + 4 + 0) = 2; pair 2: 0.5 * (1 + 1 + 1) = 1.5; mean 1.75 (a mean over dims would give 0.583)
    assert terms["nll_x"].item() == pytest.approx(1.75) and terms["nll_y"].item() == pytest.approx(1.75)
    assert "mse_x" not in terms and "l1_x" not in terms
    expected = (0.5 + 1.0) * (1.75 + 1.75) + 1.0 * (0.5 + 1.0) * (terms["kl_exclusive_x"] + terms["kl_exclusive_y"]) \
        + 0.5 * terms["kl_joint"] + 1.0 * (terms["kl_joint_to_r_x"] + terms["kl_joint_to_r_y"])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_r_fit_term_trains_r_but_leaves_the_joint_posterior_alone():
    """The lambda = 0 ablation with trained r^x, r^y: KL[sg(q(z^s|x,y)) || r] reaches the r heads only."""
    torch.manual_seed(0)
    config = MLPModelConfig(input_dim=6, hidden_dims=[8, 5], code_dim=3, joint_hidden_dim=4, decoder_hidden_dim=4,
                            standardise="none")
    model = MLPIIAE(config)
    x, y = torch.randn(8, 6), torch.randn(8, 6)
    gradients = {}
    for weight in (0.0, 1.0):
        model.zero_grad()
        torch.manual_seed(1)
        output = model(x, y)
        loss = LossConfig(beta=0.5, lambda_=0.0, reconstruction_weight=1.0, kl_anneal_steps=0.0,
                          reconstruction="gaussian", r_fit_weight=weight)
        terms = iiae_loss(x, y, output.reconstruction_x, output.reconstruction_y, output.posteriors, loss, step=0)
        terms["loss"].backward()
        gradients[weight] = {name: p.grad.clone() if p.grad is not None else None
                             for name, p in model.named_parameters()}
    assert "kl_detached_joint_to_r" in terms
    untrained = gradients[0.0]["shared_encoder_x.out.weight"]
    assert untrained is None or not untrained.any()  # lambda = 0 alone never trains r^x's head
    assert gradients[1.0]["shared_encoder_y.out.weight"].abs().sum() > 0
    for name, grad in gradients[1.0].items():
        if name.startswith(("joint_shared_head", "decoder", "exclusive")):
            assert torch.allclose(grad, gradients[0.0][name]), name  # the joint code is not pulled towards r


def test_standardisation_is_fitted_per_domain_and_makes_codes_invariant_to_feature_scale():
    """Codes of a model fitted on (a * x + b) equal those of the same weights fitted on x: scale-free training."""
    torch.manual_seed(0)
    config = MLPModelConfig(input_dim=5, hidden_dims=[6], code_dim=3, joint_hidden_dim=4, decoder_hidden_dim=4)
    model = MLPIIAE(config).eval()
    x, y = torch.randn(40, 5) * 3 + 1, torch.rand(30, 5) * 0.01
    model.fit_standardisation(x.numpy(), y.numpy())
    assert torch.allclose(model.shift_x, x.mean(0)) and torch.allclose(model.scale_x, x.std(0))
    assert torch.allclose(model.shift_y, y.mean(0)) and torch.allclose(model.scale_y, y.std(0))
    standardised_x, standardised_y = model.standardise(x, y)
    assert torch.allclose(standardised_x.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(standardised_y.std(0), torch.ones(5), atol=1e-4)
    codes = model.encode_shared_x(x)
    rescaled = MLPIIAE(config).eval()
    rescaled.load_state_dict(model.state_dict())
    scale, shift = torch.tensor([100.0, 0.1, 7.0, 1.0, 3.0]), torch.tensor([5.0, -2.0, 0.0, 1.0, 9.0])
    rescaled.fit_standardisation((x * scale + shift).numpy(), (y * scale).numpy())
    assert torch.allclose(rescaled.encode_shared_x(x * scale + shift), codes, atol=1e-4)

    shared = MLPIIAE(MLPModelConfig(input_dim=5, hidden_dims=[6], code_dim=3, joint_hidden_dim=4,
                                    decoder_hidden_dim=4, standardise="shared"))
    shared.fit_standardisation(x, y)
    both = torch.cat([x, y])
    assert torch.allclose(shared.shift_x, both.mean(0)) and torch.equal(shared.shift_x, shared.shift_y)
    constant = torch.ones(10, 5)  # a dimension that never varies keeps scale 1 (no division by zero)
    model.fit_standardisation(constant, constant)
    assert torch.equal(model.scale_x, torch.ones(5)) and torch.isfinite(model.standardise_x(constant)).all()
    none = MLPIIAE(MLPModelConfig(input_dim=5, hidden_dims=[6], code_dim=3, standardise="none"))
    none.fit_standardisation(x, y)
    assert torch.equal(none.standardise_x(x), x) and "shift_x" not in none.state_dict()


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    config = MLPModelConfig(input_dim=10, hidden_dims=[8, 6], code_dim=3, joint_hidden_dim=5, decoder_hidden_dim=4)
    model = MLPIIAE(config).eval()
    model.fit_standardisation(torch.randn(20, 10) * 5, torch.randn(20, 10) + 3)
    model.save_pretrained(tmp_path / "model")
    loaded = IIAE.from_pretrained(tmp_path / "model")
    x = torch.randn(4, 10)
    assert torch.equal(model.encode_shared_x(x), loaded.encode_shared_x(x))
    assert torch.equal(loaded.scale_x, model.scale_x) and loaded.scale_x.ne(1).all()
    assert loaded.config == config.model_config()


def test_model_files_of_the_earlier_feature_model_load_as_mlp_iiae(tmp_path):
    """tests/data/zs_model_v0 was written by the MLPIIAE class this architecture replaced (kind zs_sbir_mlp_iiae,
    code_dim): it loads as the same model, codes equal to those it gave then."""
    model = load_model(DATA / "zs_model_v0")
    assert isinstance(model, IIAE) and model.config.architecture == "mlp"
    assert (model.config.exclusive_dim, model.config.shared_channels, model.config.standardise) == (3, 3, "per_domain")
    expected = json.loads((DATA / "zs_model_v0" / "expected_codes.json").read_text())
    probe = torch.tensor(expected["probe"])
    with torch.no_grad():
        assert torch.allclose(model.encode_shared_x(probe), torch.tensor(expected["shared_x"]), atol=1e-6)
        assert torch.allclose(model.encode_shared_y(probe), torch.tensor(expected["shared_y"]), atol=1e-6)
    # files written before standardisation existed (no ``standardise`` key) hold unstandardised models
    old = tmp_path / "model"
    shutil.copytree(DATA / "zs_model_v0", old)
    meta = json.loads((old / "config.json").read_text())
    del meta["model"]["standardise"]
    (old / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unexpected tensor (shift|scale)_"):  # buffers it has no use for
        IIAE.from_pretrained(old)
    unstandardised = MLPIIAE(MLPModelConfig(input_dim=6, hidden_dims=[5, 4], code_dim=3, joint_hidden_dim=4,
                                            decoder_hidden_dim=4, standardise="none"))
    unstandardised.save_pretrained(tmp_path / "new")
    shutil.copy(tmp_path / "new" / "model.safetensors", old / "model.safetensors")
    assert IIAE.from_pretrained(old).config.standardise == "none"


def test_image_model_files_of_the_first_format_still_load():
    """tests/data/image_model_v1: written by iiae 0.1.0 before ModelConfig had the mlp keys; same codes."""
    model = IIAE.from_pretrained(DATA / "image_model_v1")
    assert model.config.architecture == "small" and model.config.standardise == "none"
    expected = json.loads((DATA / "image_model_v1" / "expected_codes.json").read_text())
    probe = torch.linspace(-1, 1, 2 * 3 * 16 * 16).view(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.encode_shared_x(probe).flatten(), torch.tensor(expected["shared_x"]), atol=1e-6)
        assert torch.allclose(model.encode_exclusive_y(probe), torch.tensor(expected["exclusive_y"]), atol=1e-6)


def test_bundled_zs_configs_carry_the_paper_recipe_and_the_default():
    paper = load_zs_config("zs_sketchy_paper")
    assert paper.loss.reconstruction == "mse" and paper.loss.reconstruction_weight == 10.0
    assert paper.model.standardise == "none" and paper.train.epochs == 10 and paper.loss.kl_anneal_steps == 2000.0
    default = load_zs_config("zs_sketchy")
    assert default.loss.reconstruction == "gaussian" and default.model.standardise == "per_domain"
    assert default.loss.kl_anneal_steps == 0.0 and default.train.epochs == 40
    for config in (paper, default):
        assert (config.loss.beta, config.loss.lambda_) == (0.5, 1.0)
        assert config.model.code_dim == 64 and config.train.adam_beta1 == 0.5
        assert config.paper["IIAE"] == {"map_all": 0.573, "precision_at_100": 0.659}
    assert load_zs_config("zs_sketchy_yelamarthi").data.unseen == "yelamarthi_21"


def test_zs_config_files_are_read_like_the_main_ones(tmp_path):
    """Errors name the file or the name; an empty file gives the defaults (the main configs refuse one)."""
    from iiae.errors import ConfigError
    from iiae.zsbir.config import ZSConfig

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_zs_config(empty) == ZSConfig()
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [")
    with pytest.raises(ConfigError, match=f"config file {broken} is not valid YAML"):
        load_zs_config(broken)
    with pytest.raises(ConfigError, match=r"does not exist \(bundled configs: zs_sketchy"):
        load_zs_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"'zs_nope' is neither a YAML file nor a bundled config \(zs_sketchy"):
        load_zs_config("zs_nope")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  code_dimension: 3\n")
    with pytest.raises(ConfigError, match=f"{unknown}: .*code_dimension"):
        load_zs_config(unknown)
