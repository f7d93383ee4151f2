"""`python -m engine evaluate`: outputs, caching, and bad input refused before any work."""

from __future__ import annotations

import csv
import json

import pytest

from engine.__main__ import main
from engine.checkpoints import resolve_model_path
from engine.errors import PathNotAllowedError
from engine.parallel import ParallelSet, save_jsonl
from tests.tiny_models import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EN = ["the first of January, nineteen ninety-nine", "twenty-one thousand three hundred and four euros"]
ES = ["el primero de enero de mil novecientos noventa y nueve", "veintiún mil trescientos cuatro euros"]


@pytest.fixture
def setup(model_root, tmp_path):
    save_checkpoint(model_root / "tiny", seed=1)
    data = tmp_path / "data"
    save_jsonl(ParallelSet("en", "es", tuple(EN), tuple(ES)), data / "en-es.jsonl")
    save_jsonl(ParallelSet("es", "en", tuple(ES), tuple(EN)), data / "es-en.jsonl")
    return model_root / "tiny", data


def test_evaluate_writes_csv_markdown_json(setup, tmp_path):
    model, data = setup
    outs = [tmp_path / f"r.{ext}" for ext in ("csv", "md", "json")]
    argv = ["evaluate", "--model", str(model), "--data", str(data), "--max-new-tokens", "6"]
    assert main(argv + sum((["--out", str(o)] for o in outs), [])) == 0
    rows = list(csv.DictReader(outs[0].open()))
    assert [(r["system"], r["direction"]) for r in rows] == [("tiny", "en-es"), ("tiny", "es-en"), ("tiny", "avg")]
    assert "tok:13a" in rows[0]["bleu_signature"]
    assert "| tiny |" in outs[1].read_text()
    payload = json.loads(outs[2].read_text())
    assert len(payload[0]["directions"][0]["samples"]) == 2


def write_lines(path, lines):
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")


@pytest.mark.parametrize(
    "problem, rows, message",
    [
        ("empty", [], "no sentence pairs"),
        ("unknown language", [{"src_lang": "en", "tgt_lang": "xx", "source": "a", "target": "b"}], "xx"),
        ("empty target", [{"src_lang": "en", "tgt_lang": "es", "source": "a", "target": " "}], "empty target"),
        (
            "mixed directions",
            [
                {"src_lang": "en", "tgt_lang": "es", "source": "a", "target": "b"},
                {"src_lang": "en", "tgt_lang": "pt", "source": "a", "target": "b"},
            ],
            "differs",
        ),
    ],
)
def test_bad_data_is_refused_by_name(setup, tmp_path, capsys, problem, rows, message):
    model, _ = setup
    bad = tmp_path / "bad.jsonl"
    write_lines(bad, rows)
    assert main(["evaluate", "--model", str(model), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_tokenizer_without_chat_template_is_refused(setup, capsys):
    model, data = setup
    config = model / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings.pop("chat_template", None)
    config.write_text(json.dumps(settings))
    for extra in model.glob("chat_template.*"):
        extra.unlink()
    assert main(["evaluate", "--model", str(model), "--data", str(data)]) == 2
    assert "chat template" in capsys.readouterr().err


def test_a_model_named_on_the_command_line_may_lie_outside_the_roots(setup, tmp_path):
    _, data = setup
    outside = save_checkpoint(tmp_path / "elsewhere", seed=2)
    out = tmp_path / "r.csv"
    assert (
        main(["evaluate", "--model", str(outside), "--data", str(data), "--max-new-tokens", "2", "--out", str(out)])
        == 0
    )
    assert {r["system"] for r in csv.DictReader(out.open())} == {"elsewhere"}
    with pytest.raises(PathNotAllowedError, match="outside the configured model roots"):
        resolve_model_path(outside)  # the command's trust ends with it


def test_second_run_is_served_from_the_cache_without_loading(setup, tmp_path, monkeypatch):
    import engine.checkpoints

    model, data = setup
    argv = [
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(data),
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path / "a.csv"),
    ]
    assert main(argv) == 0
    monkeypatch.setattr(
        engine.checkpoints, "load_model", lambda *a, **k: pytest.fail("model loaded for cached results")
    )
    assert main(argv[:-1] + [str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
