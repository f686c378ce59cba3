"""A model on one's own image files (iiae.runs.own_images, ``iiae translate --images``, ``iiae retrieve``): files of
any size and mode become the model's inputs, translation takes z from the prior (seeded) or a style image, retrieval
ranks as the evaluation does and its cache gives identical results; bad files give one line and write nothing.

Untrained tiny models saved as model folders: no training, so this file stays in the fast tier."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import expect_error

from iiae import IIAE, ModelConfig
from iiae.cli.main import main
from iiae.data.image_files import read_image, read_images
from iiae.errors import DataError
from iiae.evaluation.figures import retrieval_panel_size
from iiae.evaluation.retrieval import rank_by_distance, reference_partner_ranks
from iiae.runs import own_images
from iiae.runs.own_images import (
    encode_shared,
    model_fingerprint,
    retrieve_images,
    translate_images,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"image_size": 16, "encoder_widths": [8], "exclusive_widths": [8, 8], "decoder_widths": [8],
        "shared_channels": 4}  # fmt: skip


def tiny_model(seed: int = 0, **sizes) -> IIAE:
    torch.manual_seed(seed)
    return IIAE(ModelConfig(**{**TINY, **sizes})).eval()


def same_shared_encoders(model: IIAE) -> IIAE:
    """r^y := r^x: an image's shared code is the same as X and as Y, so its own file is at distance 0."""
    model.shared_encoder_y.load_state_dict(model.shared_encoder_x.state_dict())
    return model


def noise_images(folder, count: int, seed: int = 0, size=(23, 31)) -> list:
    """``count`` random RGB images of ``size`` (width, height) in ``folder``: 0.png, 1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{index}.png")
        paths.append(folder / f"{index}.png")
    return paths


# ------------------------------------------------------------------------------------------ reading files
def test_any_size_and_mode_is_converted_and_resized_to_the_model_input(tmp_path):
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(tmp_path / "rgba.png")  # not square, half-opaque red
    Image.new("L", (7, 9), 255).save(tmp_path / "grey.png")
    Image.new("RGB", (64, 64), (0, 0, 255)).convert("P").save(tmp_path / "palette.png")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    red = read_image(tmp_path / "rgba.png", 16, 3)
    assert red.shape == (3, 16, 16) and red.dtype == torch.float32
    pink = 127 / 127.5 - 1  # over white: 255 * (1 - 128 / 255)
    assert torch.allclose(red, torch.tensor([1.0, pink, pink])[:, None, None].expand(3, 16, 16))
    grey_as_rgb = read_image(tmp_path / "grey.png", 16, 3)  # enlarged 7x9 -> 16x16, L repeated into RGB
    assert grey_as_rgb.shape == (3, 16, 16) and torch.allclose(grey_as_rgb, torch.ones(3, 16, 16))
    blue_as_grey = read_image(tmp_path / "palette.png", 8, 1)  # L = 0.114 * 255 for pure blue (ITU-R 601-2)
    assert blue_as_grey.shape == (1, 8, 8) and torch.allclose(blue_as_grey, torch.full((1, 8, 8), 29 / 127.5 - 1))
    assert torch.allclose(read_image(tmp_path / "cmyk.jpg", 4, 3), torch.ones(3, 4, 4), atol=0.02)  # white
    batch = read_images([tmp_path / "rgba.png", tmp_path / "grey.png"], 32, 1)
    assert batch.shape == (2, 1, 32, 32) and batch.min() >= -1 and batch.max() <= 1


def test_shrinking_averages_pixel_areas(tmp_path):
    stripes = np.zeros((32, 32), dtype=np.uint8)
    stripes[:, ::2] = 255  # black and white columns average to grey
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    assert torch.allclose(read_image(tmp_path / "stripes.png", 16, 1), torch.zeros(1, 16, 16), atol=0.01)


def bad_files(tmp_path) -> dict:
    """A missing file, a text file, a truncated PNG and a decompression bomb, by what they are."""
    good = noise_images(tmp_path / "good", 1, size=(64, 64))[0]
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:300])
    Image.new("1", (30000, 15000)).save(tmp_path / "bomb.png")  # 4.5e8 pixels, > 2x PIL's limit; a few KB
    return {"does not exist": tmp_path / "missing.png", "cannot be decoded": tmp_path / "notes.png",
            "truncated": tmp_path / "truncated.png", "pixels": tmp_path / "bomb.png"}  # fmt: skip


def test_bad_files_are_named(tmp_path):
    for fragment, path in bad_files(tmp_path).items():
        with pytest.raises(DataError) as error:
            read_image(path, 16, 3)
        assert str(path) in str(error.value) and fragment in str(error.value)


# ---------------------------------------------------------------------------------------------- translation
def decoded_png(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


def test_translation_takes_z_from_the_style_image_or_the_seeded_prior(tmp_path):
    model = tiny_model()
    inputs = noise_images(tmp_path / "in", 3)
    style = noise_images(tmp_path / "style", 1, seed=5)[0]
    x = read_images(inputs, 16, 3)
    with torch.no_grad():
        shared = model.encode_shared_x(x)
        prior = model.decode_y(model.sample_exclusive(3, torch.Generator().manual_seed(7)), shared)
        styled = model.decode_y(model.encode_exclusive_y(read_image(style, 16, 3)[None]).expand(3, -1), shared)

    written = translate_images(model, inputs, "x-to-y", tmp_path / "prior", seed=7)
    assert [path.name for path in written] == ["0_to_y.png", "1_to_y.png", "2_to_y.png"]
    for path, expected in zip(written, prior):
        assert torch.allclose(decoded_png(path), expected, atol=0.5 / 127.5 + 1e-6)  # to 8-bit rounding
    for path, expected in zip(translate_images(model, inputs, "x-to-y", tmp_path / "style", style=style), styled):
        assert torch.allclose(decoded_png(path), expected, atol=0.5 / 127.5 + 1e-6)
    assert (prior - styled).abs().max() > 0.05  # the style's code is not a prior draw

    back = translate_images(model, inputs[:1], "y-to-x", tmp_path / "back", seed=7)
    assert [path.name for path in back] == ["0_to_x.png"]
    with torch.no_grad():
        expected = model.decode_x(model.sample_exclusive(1, torch.Generator().manual_seed(7)),
                                  model.encode_shared_y(x[:1]))  # fmt: skip
    assert torch.allclose(decoded_png(back[0]), expected[0], atol=0.5 / 127.5 + 1e-6)


def test_the_same_seed_writes_the_same_files_another_seed_other_ones(tmp_path):
    model = tiny_model()
    inputs = noise_images(tmp_path / "in", 2)
    first = [path.read_bytes() for path in translate_images(model, inputs, "x-to-y", tmp_path / "a", seed=3)]
    again = [path.read_bytes() for path in translate_images(model, inputs, "x-to-y", tmp_path / "b", seed=3)]
    other = [path.read_bytes() for path in translate_images(model, inputs, "x-to-y", tmp_path / "c", seed=4)]
    assert first == again and first[0] != other[0] and first[1] != other[1]


def test_grey_model_writes_grey_pngs_of_the_model_size(tmp_path):
    model = tiny_model(x_channels=1, y_channels=3)
    inputs = noise_images(tmp_path / "in", 1, size=(50, 20))
    (written,) = translate_images(model, inputs, "y-to-x", tmp_path / "out")
    with Image.open(written) as image:
        assert image.mode == "L" and image.size == (16, 16)


# ------------------------------------------------------------------------------------------------ retrieval
def test_rank_by_distance_orders_as_the_evaluation_ranks_partners():
    codes = torch.randn(40, 6, dtype=torch.float64)
    candidates = torch.cat([codes[:20], codes[:20]])  # exact ties: the lower index ranks first
    queries = candidates + 0.3 * torch.randn(40, 6, dtype=torch.float64)
    ranks = reference_partner_ranks(queries, candidates)
    for index in range(40):
        order, distances = rank_by_distance(queries[index], candidates)
        assert int((order == index).nonzero()) == int(ranks[index])
        assert torch.all(distances[1:] >= distances[:-1])


def test_retrieval_finds_the_query_itself_first_and_ranks_the_rest_by_distance(tmp_path):
    model = same_shared_encoders(tiny_model())
    gallery = noise_images(tmp_path / "gallery" / "nested", 7)
    query = gallery[4]
    result = retrieve_images(model, query, tmp_path / "gallery", top=7, out=tmp_path / "panel.png",
                             cache_dir=tmp_path / "cache", log=lambda _: None)  # fmt: skip
    assert result.matches[0].path == query and result.matches[0].score == 0.0 and result.matches[0].rank == 1
    with torch.no_grad():
        codes = encode_shared(model, read_images(gallery, 16, 3), "y").double()
    expected = ((codes - codes[4]) ** 2).sum(dim=1)
    assert [match.path for match in result.matches] == [gallery[i] for i in torch.argsort(expected).tolist()]
    assert [match.score for match in result.matches] == pytest.approx(sorted(expected.tolist()), abs=1e-9)
    with Image.open(tmp_path / "panel.png") as image:
        assert image.size == retrieval_panel_size(7)


def test_a_cache_hit_gives_identical_results_and_encodes_nothing(tmp_path, monkeypatch):
    model = tiny_model()
    noise_images(tmp_path / "gallery", 9)
    query = noise_images(tmp_path / "query", 1, seed=3)[0]
    reads = []
    read = own_images.read_domain_images
    monkeypatch.setattr(own_images, "read_domain_images", lambda *args: reads.append(len(args[1])) or read(*args))

    def retrieve(**options):
        options = {"top": 5, "query_domain": "y", "out": None, "cache_dir": tmp_path / "cache", **options}
        return retrieve_images(model, query, tmp_path / "gallery", log=lambda _: None, **options)

    first = retrieve()
    assert not first.cached and reads == [1, 9] and first.measure == "squared L2 distance"
    reads.clear()
    second = retrieve()
    assert second.cached and second.cache == first.cache and reads == [1]  # the query only
    assert second.matches == first.matches  # paths and float scores, exactly
    assert len(list((tmp_path / "cache").iterdir())) == 1

    os.utime(tmp_path / "gallery" / "2.png", ns=(1, 1))  # a new timestamp, the same bytes: still a hit
    reads.clear()
    assert retrieve().cached and reads == [1]
    noise_images(tmp_path / "other", 3, seed=5)[2].replace(tmp_path / "gallery" / "2.png")  # other bytes
    os.utime(tmp_path / "gallery" / "2.png", ns=(1, 1))  # ... under the same timestamp: encoded again
    reads.clear()
    assert not retrieve().cached and reads == [1, 9]
    assert not retrieve(query_domain="x").cached  # codes of the other encoder
    other_weights = tiny_model(seed=1)
    assert model_fingerprint(other_weights) != model_fingerprint(model)
    assert model_fingerprint(tiny_model()) == model_fingerprint(model)  # the same weights, the same key


# --------------------------------------------------------------------------------------------- command line
@pytest.fixture
def model_folder(tmp_path):
    return same_shared_encoders(tiny_model()).save_pretrained(tmp_path / "model")


def test_cli_translate_images_and_retrieve(model_folder, tmp_path, capsys):
    inputs = noise_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert main(["translate", str(model_folder), "--images", *map(str, inputs), "--direction", "x-to-y",
                 "--out", str(out), "--seed", "2"]) == 0  # fmt: skip
    assert sorted(path.name for path in out.iterdir()) == ["0_to_y.png", "1_to_y.png"]
    assert "z^y from the prior, seed 2" in capsys.readouterr().out
    assert main(["translate", str(model_folder), "--images", str(inputs[0]), "--direction", "y-to-x",
                 "--style", str(inputs[1]), "--out", str(out)]) == 0  # fmt: skip
    assert (out / "0_to_x.png").is_file() and not list(out.glob(".*"))  # no temporary files left

    panel = tmp_path / "panel.png"
    argv = ["retrieve", str(model_folder), "--query", str(inputs[1]), "--gallery", str(tmp_path / "in"),
            "--top", "1", "--out", str(panel), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"   1  0.0000  {inputs[1]}" in printed.splitlines() and f"wrote {panel}" in printed
    with Image.open(panel) as image:
        assert image.size == retrieval_panel_size(1)
    assert main(argv) == 0
    assert "gallery codes: cached" in capsys.readouterr().out


def test_cli_bad_inputs_give_one_line_and_write_nothing(model_folder, tmp_path, capsys):
    good = noise_images(tmp_path / "good", 2)
    out, panel, cache = tmp_path / "out", tmp_path / "panel.png", tmp_path / "cache"
    translate = ["translate", str(model_folder), "--direction", "x-to-y", "--out", str(out), "--images"]
    retrieve = ["retrieve", str(model_folder), "--out", str(panel), "--cache-dir", str(cache),
                "--gallery"]  # fmt: skip
    for fragment, bad in bad_files(tmp_path).items():
        expect_error(capsys, [*translate, *map(str, good), str(bad)], str(bad), fragment)
        expect_error(capsys, [*translate, str(good[0]), "--style", str(bad)], str(bad), fragment)
        expect_error(capsys, [*retrieve, str(tmp_path / "good"), "--query", str(bad)], str(bad), fragment)
        broken = tmp_path / f"gallery-{bad.stem}"
        noise_images(broken, 2)
        if bad.exists():
            (broken / bad.name).write_bytes(bad.read_bytes())
            expect_error(capsys, [*retrieve, str(broken), "--query", str(good[0])], str(broken / bad.name), fragment)
    (tmp_path / "empty").mkdir()
    expect_error(capsys, [*retrieve, str(tmp_path / "empty"), "--query", str(good[0])], "holds no images")
    expect_error(capsys, [*retrieve, str(tmp_path / "nowhere"), "--query", str(good[0])], "does not exist")
    expect_error(capsys, [*retrieve, str(tmp_path / "good"), "--query", str(good[0]), "--top", "0"], "--top")
    expect_error(capsys, ["translate", str(model_folder), "--images", str(good[0])], "--direction")
    expect_error(capsys, ["translate", str(model_folder), "--style", str(good[0])], "--images")
    expect_error(capsys, [*translate, str(good[0]), "--data-root", "x"], "--data-root")
    twins = [good[0], tmp_path / "twin" / good[0].name]
    noise_images(tmp_path / "twin", 1)
    expect_error(capsys, [*translate, *map(str, twins)], "0_to_y.png")  # two inputs, one output name
    assert not out.exists() and not panel.exists() and not cache.exists()
    (tmp_path / "a_file").write_text("")
    expect_error(capsys, [*translate[:-2], str(tmp_path / "a_file"), "--images", str(good[0])], "is a file")


def test_feature_vector_models_are_refused(tmp_path, capsys):
    model = IIAE(ModelConfig(architecture="mlp", input_dim=8, hidden_dims=[8], joint_hidden_dim=8,
                             decoder_hidden_dim=8, exclusive_dim=2, shared_channels=2))  # fmt: skip
    folder = model.save_pretrained(tmp_path / "mlp")
    image = noise_images(tmp_path / "in", 1)[0]
    expect_error(capsys, ["translate", str(folder), "--images", str(image), "--direction", "x-to-y",
                          "--out", str(tmp_path / "out")], "feature-vector model")  # fmt: skip
    assert json.loads((folder / "config.json").read_text())["model"]["architecture"] == "mlp"


@pytest.mark.parametrize("damage", ["negative batch-norm variance", "weights near the float32 limit"])
def test_finite_weights_that_compute_nan_are_refused_not_used(model_folder, tmp_path, capsys, damage):
    """Finite weights can still compute NaN or Inf (a tampered batch-norm variance below 0, every weight 3e38):
    translate and retrieve refuse with one line naming the part of the model, never a ranking of nan or a
    constant image with status 0."""
    from safetensors.torch import load_file, save_file

    weights = model_folder / "model.safetensors"
    state = load_file(weights)
    variances = [name for name in state if name.endswith("running_var")]
    if damage.startswith("negative"):
        assert variances, "the tiny model has no batch norm to damage"
        state = {name: -tensor - 1 if name in variances else tensor for name, tensor in state.items()}
    else:
        state = {name: torch.full_like(tensor, 3e38) if tensor.is_floating_point() else tensor
                 for name, tensor in state.items()}  # fmt: skip
    save_file(state, weights)
    good = noise_images(tmp_path / "good", 2)
    out, panel = tmp_path / "out", tmp_path / "panel.png"
    expect_error(capsys, ["translate", str(model_folder), "--direction", "x-to-y", "--out", str(out), "--images",
                          str(good[0])], "the model's", "NaN or infinite")  # fmt: skip
    shared_damaged = not damage.startswith("negative") or any("shared" in name for name in variances)
    if shared_damaged:  # retrieval reads the shared encoders only
        expect_error(capsys, ["retrieve", str(model_folder), "--query", str(good[0]), "--gallery",
                              str(tmp_path / "good"), "--out", str(panel), "--cache-dir", str(tmp_path / "c")],
                     "NaN or infinite")  # fmt: skip
    assert not out.exists() and not panel.exists()
