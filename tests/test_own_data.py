"""Your own data end to end: prepare a BPE token folder, train on it, sample text from it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from modexp.cli import app

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A BPE-prepared corpus and one trained vanilla run on it (module-scoped: trained once)."""
    import yaml

    from modexp.data.prepare import prepare
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("own")
    with open(tmp / "docs.jsonl", "w") as f:
        for i in range(400):
            f.write(json.dumps({"text": f"the cat sat on the mat number {i}. " * 4}) + "\n")
    prepare([str(tmp / "docs.jsonl")], tmp / "tok", "bpe:320", val_fraction=0.05)
    spec = {**TINY, "name": "own", "data": {"source": str(tmp / "tok"), "seq_len": 32},
            "budgets": [5e8], "variants": {"vanilla": {"kind": "vanilla"}},
            "train": {**TINY["train"], "loggers": ["tensorboard"]}}
    (tmp / "own.yaml").write_text(yaml.safe_dump(spec))
    r = CliRunner().invoke(app, ["run", str(tmp / "own.yaml"), "--results", str(tmp / "res"),
                                 "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    run_dir = next((tmp / "res" / "own").glob("*/run.json")).parent
    return tmp, run_dir, r


def test_sample_answers_in_text(trained):
    _, run_dir, _ = trained
    r = CliRunner().invoke(app, ["sample", str(run_dir), "--prompt", "the cat sat", "--json",
                                 "--max-new-tokens", "12", "--temperature", "0"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert isinstance(out["text"], str) and len(out["tokens"]) == 12
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(trained[0] / "tok" / "tokenizer.json"))
    assert out["text"] == tok.decode(out["tokens"], skip_special_tokens=False)
    assert run_dir.joinpath("run.json").read_text().count("tokenizer.json") >= 1
