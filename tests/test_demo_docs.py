"""The demo's numbers in the docs are rendered from a committed results.json, never typed by hand (issue 17, item 8)."""
import copy
import json
from pathlib import Path

import pytest

from lcm_lora.demo.docs import blocks_in, main, render_results_block, update_text

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "demo" / "README.md", ROOT / "BENCHMARKS.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_demo_results_blocks_match_their_results_json(doc):
    text = doc.read_text(encoding="utf-8")
    sources = blocks_in(text)
    assert sources, f"{doc.name} has no generated demo-results block"
    for src in sources:
        assert (ROOT / src).is_file(), f"{doc.name} renders {src}, which is not in the repository"
    rendered = update_text(text, lambda s: json.loads((ROOT / s).read_text(encoding="utf-8")))
    assert rendered == text, (f"{doc.name}: the demo-results block differs from its results.json; regenerate with "
                              f"python -m lcm_lora.demo.docs demo/results/<file>.json demo/README.md BENCHMARKS.md")


def test_the_block_follows_the_numbers(tmp_path):
    src = next(s for s in blocks_in((ROOT / "demo" / "README.md").read_text(encoding="utf-8")))
    res = json.loads((ROOT / src).read_text(encoding="utf-8"))
    block = render_results_block(res, src)
    row = next(r for r in res["rows"] if r["model"] == "tcd" and r["steps"] == 4)
    assert f"{row['fd']:.1f}" in block
    for c in res["claims"].values():
        assert c["detail"] in block
    changed = copy.deepcopy(res)
    next(r for r in changed["rows"] if r["model"] == "tcd" and r["steps"] == 4)["fd"] = 12345.6
    assert "12345.6" in render_results_block(changed, src) and "12345.6" not in block

    # the script rewrites a stale block and --check reports it
    doc = tmp_path / "doc.md"
    (tmp_path / "r.json").write_text(json.dumps(changed), encoding="utf-8")
    doc.write_text("intro\n\n" + block.replace(f"generated from {src}", f"generated from {tmp_path / 'r.json'}") + "\n")
    assert main([str(tmp_path / "r.json"), str(doc), "--check"]) == 1
    assert main([str(tmp_path / "r.json"), str(doc)]) == 0
    assert "12345.6" in doc.read_text() and doc.read_text().startswith("intro\n")
    assert main([str(tmp_path / "r.json"), str(doc), "--check"]) == 0


def test_the_docs_check_runs_from_any_folder_and_append_on_a_current_file_is_no_change(tmp_path, monkeypatch):
    """Markers hold repository-relative paths: `--check` from another folder with absolute paths reads them from the
    repository (it raised FileNotFoundError), and `--check --append` on an up-to-date file reports no difference."""
    from lcm_lora.demo.docs import main

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    assert main([str(root / "demo" / "results" / "full.json"), str(root / "demo" / "README.md"), "--check"]) == 0
    assert main([str(root / "demo" / "results" / "full.json"), str(root / "demo" / "README.md"), "--check", "--append"]) == 0
