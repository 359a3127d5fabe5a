"""Inspection: decoded captions, mined false negatives, tables, and report.html rendered in a
headless Chromium with every image loaded."""
import html as html_lib
import json
import re
import shutil
import subprocess

import pytest
import torch

from vldistill.reporting.figures import read_metrics
from vldistill.reporting.html_report import ReportInputs, _results_context, render_page, write_report
from vldistill.reporting.report import (compare_table, decode_captions, false_negatives, inspect_set,
                              results_table)
from vldistill.algorithms.retrieval import METRICS

from test_evaluate import make_set


def _summary(r_mean, selection="epoch chosen on val"):
    s = {k: r_mean for k in METRICS} | {f"{k}_std": 0.5 for k in METRICS}
    return s | {"final": {"r_mean": r_mean - 1, "r_mean_std": 0.4}, "n_seeds": 3, "selection": selection}


def _page(results: dict, title: str = "t") -> str:
    return render_page({"title": title, "written": "now", "legend": "", "curves": None, "sets": [],
                        "results": _results_context(results)})


def test_report_page_escapes_every_value():
    """Captions, labels and titles come from users' data: none may become markup."""
    evil = '<script>alert("x")</script>'
    page = _page(_results(methods={evil: _summary(3.0)}), title=evil)
    assert "<script>" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


def _results(**extra):
    return {"dataset": "shapes", "n_pairs": 12,
            "methods": {"full": _summary(40.0), "random": _summary(8.0), "lors": _summary(12.0)},
            "eval": {"image_tower": "convnet", "distilled_on": "convnet"}} | extra


def test_decode_captions_finds_the_caption_an_embedding_came_from(tiny_data):
    bank, captions = tiny_data.text["train"], tiny_data.dataset.train.captions
    picks = [0, 17, 123, 401]
    decoded = decode_captions(bank[picks], bank, captions, k=3)
    for j, top in zip(picks, decoded):
        assert top[0][0] == captions[j] and top[0][1] == pytest.approx(1.0, abs=1e-5)
        assert len({c for c, _ in top}) == 3                          # distinct captions
        assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    torch_path = decode_captions(bank[picks], bank, captions, k=3, backend="torch")
    assert [[c for c, _ in t] for t in torch_path] == [[c for c, _ in t] for t in decoded]


def test_false_negatives_are_the_largest_off_diagonal_entries():
    m = torch.tensor([[9.0, 0.1, 0.7], [0.3, 8.0, -1.0], [0.9, 0.2, 7.0]])
    assert false_negatives(m, 3) == [(2, 0, pytest.approx(0.9)), (0, 2, pytest.approx(0.7)),
                                     (1, 0, pytest.approx(0.3))]


def test_inspection_before_and_after(tiny_data, tmp_path):
    synthetic = make_set(tiny_data, tmp_path / "set")
    ins = inspect_set(synthetic, tiny_data.text["train"], tiny_data.dataset.train.captions, k=2, n_pairs=4)
    captions = tiny_data.dataset.train.captions
    assert ins.before == [captions[j] for j in synthetic.card["init_captions"]]
    assert all(0.5 < m < 1.0 for m in ins.moved)                      # moved a little from the start
    assert len(ins.pairs) == 4 and all(i != j for i, j, _ in ins.pairs)
    matrix = synthetic.similarity_matrix()
    assert ins.pairs[0][2] == pytest.approx(float((matrix - torch.diag(torch.full((12,), 1e9))).max()))


def test_tables_order_methods_and_mark_test_selection():
    text = results_table(_results())
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == ["lors", "random", "full"]
    assert "12.00 ± 0.50" in text and "11.00 ± 0.40" in text
    assert not any("†" in row for row in rows) and "epoch chosen on the TEST split" not in text
    on_test = _results(methods={"lors": _summary(12.0, "best epoch on TEST (reference protocol)")})
    marked = results_table(on_test)
    assert "| lors † |" in marked and "epoch chosen on the TEST split" in marked
    assert "epoch chosen on the TEST split" in _page(on_test)
    assert "TEST split" not in _page(_results())
    transfer = _results(towers={"timm:resnet10t": {"settings": {"image_tower": "timm:resnet10t", "lr": 0.01,
                                                                "epochs": 5, "augment": "flip"},
                                                   "methods": {"lors": _summary(6.0)}}})
    text = results_table(transfer)
    assert "| method | convnet (distilled on) | timm:resnet10t |" in text
    assert "| lors | 12.00 ± 0.50 | 6.00 ± 0.50 |" in text and "| full | 40.00 ± 0.50 | - |" in text
    assert "timm:resnet10t: timm:resnet10t, lr 0.01, 5 epochs, augment flip" in text
    frozen = _results(towers={"convnet-frozen": {"settings": {"image_tower": "convnet", "frozen_backbone": True,
                                                              "lr": 0.1, "epochs": 5, "augment": "none"},
                                                 "methods": {"lors": _summary(7.0)}}})
    text = results_table(frozen)      # the distilled-on architecture under another protocol
    assert "| method | convnet (distilled on) | convnet-frozen |" in text
    assert "- convnet-frozen: convnet (frozen backbone: two heads train), lr 0.1" in text
    both = compare_table([("runA", _results()), ("runB", transfer)])
    assert both.count("| run |") == 1 and "| runB | shapes | 12 | timm:resnet10t | lors | val |" in both


def test_ceilings_are_rows_after_the_methods_without_std():
    exact = {"oracle": {k: 22.77123 for k in METRICS}, "chance": {k: 0.53312 for k in METRICS}}
    text = results_table(_results(ceilings=exact))
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == ["lors", "random", "full", "oracle (perfect ranker)", "chance"]
    assert rows[-2] == "| oracle (perfect ranker) | " + "22.8 | " * 6 + "22.77 | - | - | - |"
    assert rows[-1] == "| chance | " + "0.5 | " * 6 + "0.53 | - | - | - |"
    assert "oracle (perfect ranker): the expected recall" in text and "ties broken at random" in text
    chance_only = results_table(_results(ceilings={"chance": exact["chance"]}))   # truth unknown
    assert "| chance |" in chance_only and "chance: random scores" in chance_only and "oracle" not in chance_only
    page = _page(_results(ceilings=exact))
    assert "oracle (perfect ranker)" in page and "22.77" in page
    assert "oracle" not in results_table(_results())          # an older run's results.json


def test_read_metrics_keeps_the_last_record_of_a_resumed_iteration(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"stage": "distill", "kind": "lowrank", "it": 1, "loss": 1.0},
             {"stage": "distill", "kind": "lowrank", "it": 2, "loss": 2.0},
             {"stage": "distill", "kind": "lowrank", "it": 2, "loss": 3.0},
             {"stage": "eval", "lors": 5.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = read_metrics(path)
    assert [r.get("loss") for r in records] == [1.0, 3.0, None]


def _write_demo_report(tiny_data, tmp_path):
    sets = {"lors": make_set(tiny_data, tmp_path / "lors" / "set"),
            "lors-identity": make_set(tiny_data, tmp_path / "lors-identity" / "set", kind="identity", seed=4)}
    records = [{"stage": "distill", "kind": kind, "it": it, "loss": 1.0 / it, "lr_img": 0.1 + it / 100,
                "lr_txt": 0.1} for kind in ("lowrank", "identity") for it in range(1, 21)]
    records += [{"stage": "distill_eval", "kind": "lowrank", "it": it, "r_mean": 5.0 + it} for it in (10, 20)]
    records.append({"stage": "eval", "lors": 12.0, "lors-identity": 9.0})
    inputs = ReportInputs(title="report test", sets=sets, text_bank=tiny_data.text["train"],
                          captions=tiny_data.dataset.train.captions, mean=tiny_data.dataset.mean,
                          std=tiny_data.dataset.std, results=_results(), records=records)
    return write_report(inputs, tmp_path / "report")


def test_report_html_is_self_contained(tiny_data, tmp_path):
    page, inspections = _write_demo_report(tiny_data, tmp_path)
    text = page.read_text()
    sources = re.findall(r'<img [^>]*src="([^"]+)"', text)
    # curves, 2 grids, 1 heat map, 1 pair panel, 12 + 12 pair thumbnails, 2 x 10 false-negative thumbnails
    assert len(sources) == 1 + 2 + 1 + 1 + 24 + 20
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in text and "http" not in text
    for name in ("curves", "lors_grid", "lors-identity_grid", "lors_similarity", "lors_pairs"):
        assert (page.parent / f"{name}.png").is_file()
    assert not (page.parent / "lors-identity_similarity.png").exists()        # identity: nothing to show
    first = inspections["lors"].after[0][0][0]
    assert html_lib.escape(first) in text and "12.00 ± 0.50" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
  document.body.setAttribute('data-images', JSON.stringify(imgs));
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium); "
                                              "report.html was not rendered")
def test_report_html_renders_in_chromium_with_every_image_loaded(tiny_data, tmp_path):
    page, _ = _write_demo_report(tiny_data, tmp_path)
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", CHECK))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-images="([^"]*)"', dom)
    assert found, f"the page did not finish loading in chromium: {dom[:300]!r}"
    images = json.loads(html_lib.unescape(found.group(1)))
    assert len(images) == 49
    assert all(complete and width > 0 and height > 0 for complete, width, height in images), images
