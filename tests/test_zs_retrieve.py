"""``iiae zs-sbir retrieve``: one's own sketch (or photo) against a folder of images with a tiny run trained from
generated images through the CLI; the ranking is the run's own (extractor -> codes -> cosine), the gallery is
embedded once, and every bad input gives one line, status 2 and nothing written."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_zs_end_to_end import tiny_config
from tiny_runs import expect_error

from iiae.cli.main import main
from iiae.evaluation.figures import retrieval_panel_size
from iiae.zsbir.baseline import load_model
from iiae.zsbir.feature_extractor import FeatureExtractor

RESULT = re.compile(r"^\s*(\d+)\s+(-?\d+\.\d{4})\s+(\S.*)$")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny IIAE run (small CNN features) trained through the CLI from generated Sketchy-layout images."""
    root = tmp_path_factory.mktemp("zs_retrieve")
    run = root / "run"
    assert main(["zs-sbir", "train", "--config", str(tiny_config(root)), "--out", str(run), "--no-progress",
                 "--threads", "1"]) == 0
    return run, root / "sketchy"


def images(folder, suffix):
    return sorted(folder.rglob(f"*{suffix}"), key=lambda path: path.relative_to(folder).as_posix())


def printed_results(out: str) -> list[tuple[int, float, str]]:
    return [(int(m[1]), float(m[2]), m[3]) for m in map(RESULT.match, out.splitlines()) if m]


def expected_ranking(run, query, gallery, domain):
    """(path, cosine) of every gallery file, best first, from the run's saved extractor and model directly."""
    extractor, model = FeatureExtractor.load(run / "feature_extractor"), load_model(run / "model")
    other = "photo" if domain == "sketch" else "sketch"
    encoders = {"sketch": model.encode_shared_x, "photo": model.encode_shared_y}
    with torch.no_grad():
        q = encoders[domain](torch.as_tensor(extractor.embed([query], domain))).double()
        g = encoders[other](torch.as_tensor(extractor.embed(gallery, other))).double()
    similarity = (torch.nn.functional.normalize(g, dim=1) @ torch.nn.functional.normalize(q, dim=1).T)[:, 0]
    order = np.argsort(-np.round(similarity.numpy(), 10), kind="stable")  # ties in gallery order
    return [(str(gallery[i]), float(similarity[i])) for i in order]


def assert_same_ranking(printed, expected, top):
    assert [rank for rank, _, _ in printed] == list(range(1, min(top, len(expected)) + 1))
    assert [path for _, _, path in printed] == [path for path, _ in expected[:top]]
    assert [value for _, value, _ in printed] == pytest.approx([value for _, value in expected[:top]], abs=6e-5)


def test_retrieve_ranks_like_the_run_draws_a_panel_and_embeds_the_gallery_once(tiny_run, tmp_path, monkeypatch,
                                                                               capsys):
    run, sketchy = tiny_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["feature_extractor"] == "feature_extractor/"
    assert (run / "feature_extractor" / "feature_extractor.safetensors").is_file()  # small CNN: trained weights

    calls = []
    embed = FeatureExtractor.embed

    def spy(self, paths, domain):
        calls.append((len(paths), domain))
        return embed(self, paths, domain)

    monkeypatch.setattr(FeatureExtractor, "embed", spy)
    query, gallery, cache, panel = sketchy / "sketch" / "door" / "n3_0-1.png", sketchy / "photo", tmp_path / "c", \
        tmp_path / "panel.png"
    argv = ["zs-sbir", "retrieve", str(run), "--query", str(query), "--gallery", str(gallery), "--top", "5",
            "--out", str(panel), "--cache-dir", str(cache)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert calls == [(1, "sketch"), (18, "photo")]
    printed = printed_results(out)
    expected = expected_ranking(run, query, images(gallery, ".jpg"), "sketch")
    assert_same_ranking(printed, expected, 5)
    assert f"wrote {panel}" in out
    with Image.open(panel) as image:
        assert image.size == retrieval_panel_size(5)
    assert len(list(cache.glob("gallery-*.npz"))) == 1 and not list(cache.glob("*tmp*"))

    calls.clear()
    assert main(argv) == 0
    assert calls == [(1, "sketch")]  # the gallery came from the cache
    assert printed_results(capsys.readouterr().out) == printed

    first, second = images(gallery, ".jpg")[:2]
    os.utime(first, ns=(1, 1))  # a new timestamp, the same bytes: still cached
    calls.clear()
    assert main(argv) == 0
    assert calls == [(1, "sketch")]
    original = first.read_bytes()
    try:
        shutil.copyfile(second, first)  # other bytes
        os.utime(first, ns=(1, 1))  # ... under the same timestamp: the gallery is embedded again
        calls.clear()
        assert main(argv) == 0
        assert calls == [(1, "sketch"), (18, "photo")]
    finally:
        first.write_bytes(original)  # the module's run and images are shared by the other tests


def test_photo_query_against_sketches_returns_the_whole_gallery_when_top_exceeds_it(tiny_run, tmp_path, capsys,
                                                                                     monkeypatch):
    run, sketchy = tiny_run
    monkeypatch.chdir(tmp_path)  # the panel's default place: ./retrieval.png
    query, gallery = sketchy / "photo" / "fan" / "n5_1.jpg", sketchy / "sketch"
    assert main(["zs-sbir", "retrieve", str(run), "--query", str(query), "--query-domain", "photo", "--gallery",
                 str(gallery), "--top", "50", "--cache-dir", str(tmp_path / "c")]) == 0
    printed = printed_results(capsys.readouterr().out)
    assert len(printed) == 18
    assert_same_ranking(printed, expected_ranking(run, query, images(gallery, ".png"), "photo"), 50)
    with Image.open(tmp_path / "retrieval.png") as image:
        assert image.size == retrieval_panel_size(18)


def test_bad_inputs_give_one_line_and_write_nothing(tiny_run, tmp_path, capsys):
    run, sketchy = tiny_run
    query, gallery = sketchy / "sketch" / "door" / "n3_0-1.png", sketchy / "photo"
    precomputed = tmp_path / "precomputed"
    shutil.copytree(run, precomputed, ignore=shutil.ignore_patterns("feature_extractor"))
    config = yaml.safe_load((precomputed / "config.yaml").read_text())
    config["data"]["source"] = "plain"
    (precomputed / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    broken = tmp_path / "broken"
    shutil.copytree(gallery, broken)
    (broken / "fan" / "zz_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "not_a_run").mkdir()
    cache, panel = tmp_path / "cache", tmp_path / "panel.png"

    def fails(run_dir, query_file, gallery_dir, *fragments, extra=()):
        argv = ["zs-sbir", "retrieve", str(run_dir), "--query", str(query_file), "--gallery", str(gallery_dir),
                "--out", str(panel), "--cache-dir", str(cache), *extra]
        expect_error(capsys, argv, *fragments)
        assert not panel.exists() and not cache.exists()

    fails(tmp_path / "not_a_run", query, gallery, f"{tmp_path / 'not_a_run'} is not a zs-sbir run folder")
    fails(precomputed, query, gallery, str(precomputed), "precomputed features", "needs a run trained from images")
    fails(run, tmp_path / "missing.png", gallery, f"query image {tmp_path / 'missing.png'} does not exist")
    fails(run, tmp_path / "notes.png", gallery, f"{tmp_path / 'notes.png'} cannot be decoded")
    fails(run, query, tmp_path / "nowhere", f"gallery folder {tmp_path / 'nowhere'} does not exist")
    fails(run, query, tmp_path / "empty", f"gallery folder {tmp_path / 'empty'} holds no images")
    fails(run, query, broken, f"{broken / 'fan' / 'zz_broken.jpg'} cannot be decoded")
    fails(run, query, gallery, "--top must be >= 1, got 0", extra=["--top", "0"])


def test_an_extractor_that_computes_nan_is_refused_not_ranked(tiny_run, tmp_path, capsys):
    """Finite but damaged weights (negated: a negative batch-norm variance) make the feature extractor compute
    NaN: refused naming the extractor, never a ranking of nan with status 0."""
    from safetensors.torch import load_file, save_file

    run, sketchy = tiny_run
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged)
    weights = next((damaged / "feature_extractor").glob("*.safetensors"))
    save_file({name: -tensor if tensor.is_floating_point() else tensor for name, tensor in load_file(weights).items()},
              weights)  # fmt: skip
    argv = ["zs-sbir", "retrieve", str(damaged), "--query", str(sketchy / "sketch" / "door" / "n3_0-1.png"),
            "--gallery", str(sketchy / "photo"), "--out", str(tmp_path / "panel.png"), "--cache-dir",
            str(tmp_path / "cache")]  # fmt: skip
    expect_error(capsys, argv, "the feature extractor", "NaN or infinite")
    assert not (tmp_path / "panel.png").exists()
