"""The MLP IIAE of the zero-shot experiment: the paper's sizes, the shared objective with MSE, save and load."""

import pytest
import torch

from iiae.config import LossConfig
from iiae.objective import iiae_loss
from iiae.zsbir.config import MLPModelConfig, load_zs_config
from iiae.zsbir.mlp_model import MLPIIAE


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


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    config = MLPModelConfig(input_dim=10, hidden_dims=[8, 6], code_dim=3, joint_hidden_dim=5, decoder_hidden_dim=4)
    model = MLPIIAE(config).eval()
    model.save_pretrained(tmp_path / "model")
    loaded = MLPIIAE.from_pretrained(tmp_path / "model")
    x = torch.randn(4, 10)
    assert torch.equal(model.encode_shared_x(x), loaded.encode_shared_x(x))
    assert loaded.config == config


def test_bundled_zs_configs_carry_the_paper_recipe():
    config = load_zs_config("zs_sketchy")
    assert config.loss.reconstruction == "mse" and config.loss.reconstruction_weight == 10.0
    assert (config.loss.beta, config.loss.lambda_, config.loss.kl_anneal_steps) == (0.5, 1.0, 2000.0)
    assert config.model.code_dim == 64 and config.train.epochs == 10 and config.train.adam_beta1 == 0.5
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
