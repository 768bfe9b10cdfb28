from __future__ import annotations

import base64
import csv
import io
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, WandbLogger

import lcam
from lcam.data import SyntheticShapes
from lcam.evaluation import MethodComparison, log_to_wandb, write_report, write_tables
from lcam.evaluation.report import png_data_uri
from lcam.models.tiny import SHAPES_WEIGHTS


class PageParser(HTMLParser):
    """Collects image sources, table rows per table id and SVG polylines."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows: dict[str, int] = {}
        self.tables: list[str] = []
        self.svgs = 0
        self.polylines: list[int] = []
        self.external: list[str] = []
        self._table: list[str] = []
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        elif tag == "table":
            self._table.append(attributes.get("id", ""))
            self.tables.append(attributes.get("id", ""))
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self.rows[self._table[-1]] = self.rows.get(self._table[-1], 0) + 1
        elif tag == "svg":
            self.svgs += 1
            self.polylines.append(0)
        elif tag == "polyline":
            self.polylines[-1] += 1
        if tag in ("script", "link", "iframe") or (
            tag in ("img", "script") and not attributes.get("src", "").startswith("data:")
        ):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag == "table":
            self._table.pop()
        elif tag == "tbody":
            self._in_body = False


@pytest.fixture(scope="module")
def results() -> dict:
    backbone = lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=6, weights=str(SHAPES_WEIGHTS), input_size=64
    )
    data = SyntheticShapes(3, seed=2)
    batch = torch.utils.data.default_collate([data[i] for i in range(3)])
    labels = backbone(batch["image"]).argmax(1)
    labels[0] = (labels[0] + 1) % 6  # one misclassified image
    methods = {
        "lcam": lcam.build_explainer(backbone),
        "gradcam": lcam.get_explainer("gradcam", backbone),
        "cam": lcam.get_explainer("cam", backbone),
    }
    comparison = MethodComparison(
        backbone,
        methods,
        metrics=("adic", "deletion_insertion", "pointing_game"),
        deletion_steps=4,
        gallery_size=2,
    )
    comparison.update(batch["image"], labels, batch["mask"])
    return comparison.results()


SANITY = [
    {"mode": m, "step": s, "layer": f"l{s}", "method": k, "spearman": 1.0 / (s + i)}
    for m in ("cascading", "independent")
    for s in (1, 2)
    for i, k in enumerate(("gradcam", "lcam"))
]
UNITS = [
    {"channel": c, "class": c % 2, "class_name": ["disc", "ring"][c % 2], "iou": c / 10}
    for c in range(5)
]


def _decode_png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    raw = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(raw))
    image.load()  # decodes every pixel: a truncated or corrupt PNG fails here
    return image


def test_report_is_self_contained_with_every_section(results, tmp_path) -> None:
    paths = write_report(
        results["rows"],
        tmp_path / "run",
        curves=results["curves"],
        gallery=results["gallery"],
        misclassified=results["misclassified"],
        unit_alignment=UNITS,
        sanity=SANITY,
    )
    assert {"csv", "markdown", "html", "sanity_csv", "unit_alignment_csv"} <= set(paths)
    page = paths["html"].read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(page)

    assert parser.external == []
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    # 2 gallery images x (1 + 3 methods) + 1 misclassified x (1 + 3 methods x 2 classes)
    assert len(parser.images) == 2 * 4 + 1 * 7
    for uri in parser.images:
        image = _decode_png(uri)
        assert image.size == (64, 64) and image.mode == "RGB"
    assert parser.rows["metrics"] == 3
    assert parser.rows["gallery"] == 2 and parser.rows["misclassified"] == 1
    assert parser.rows["unit-alignment"] == 5
    assert parser.rows["sanity"] == 4  # (mode, step) pairs, methods as columns
    # Deletion and insertion charts (black and blurred baselines) with one curve per method,
    # sanity charts with two.
    assert parser.svgs == 6 and parser.polylines == [3, 3, 3, 3, 2, 2]
    for title in ("Deletion, black baseline", "Deletion, blur baseline", "Insertion, blur"):
        assert title in page
    for method in ("lcam", "gradcam", "cam"):
        assert method in page

    with paths["csv"].open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [row["method"] for row in table] == ["lcam", "gradcam", "cam"]
    for row, original in zip(table, results["rows"], strict=True):
        assert float(row["deletion_auc"]) == pytest.approx(original["deletion_auc"])
        assert int(row["forward_passes"].split(".")[0]) == int(original["forward_passes"])
    markdown = paths["markdown"].read_text(encoding="utf-8").splitlines()
    assert sum(line.startswith("| ") for line in markdown) == 1 + 3
    assert markdown[2].startswith("| method |")


def test_minimal_report_and_missing_values(tmp_path) -> None:
    rows = [
        {"method": "a", "images": 2, "deletion_auc": 0.25, "pointing_game": None},
        {"method": "b", "images": 2, "deletion_auc": 0.5, "pointing_game": None},
    ]
    paths = write_report(rows, tmp_path, curves={}, gallery=[], misclassified=[])
    parser = PageParser()
    parser.feed(paths["html"].read_text(encoding="utf-8"))
    assert parser.rows["metrics"] == 2 and parser.images == [] and parser.svgs == 0
    assert "sanity" not in parser.tables
    with paths["csv"].open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["pointing_game"] == "" and table[1]["deletion_auc"] == "0.5"
    page = paths["html"].read_text(encoding="utf-8")
    assert '<td class="best">0.25</td>' in page  # lower deletion AUC is better


def test_trained_class_rows_get_their_own_table_and_a_rerun_without_them_drops_it(
    tmp_path,
) -> None:
    rows = [{"method": "lcam", "images": 4, "untrained_images": 1, "ad@100": 40.0}]
    trained = [{"method": "lcam", "images": 3, "untrained_images": 0, "ad@100": 20.0}]
    paths = write_report(rows, tmp_path, trained_rows=trained)
    with paths["trained_csv"].open(encoding="utf-8") as handle:
        assert list(csv.DictReader(handle))[0]["ad@100"] == "20.0"
    assert paths["trained_csv"].name == "comparison_trained_classes.csv"
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert markdown.index("40") < markdown.index("trained classes only") < markdown.index("20")
    parser = PageParser()
    parser.feed(paths["html"].read_text(encoding="utf-8"))
    assert parser.rows["metrics"] == 1 and parser.rows["metrics-trained-classes"] == 1

    again = write_report(rows, tmp_path)  # a run with nothing excluded, into the same folder
    assert "trained_csv" not in again and not (tmp_path / "comparison_trained_classes.csv").exists()
    assert "trained classes only" not in again["markdown"].read_text(encoding="utf-8")


def test_tables_alone_never_sit_beside_an_earlier_runs_page_or_checks(tmp_path) -> None:
    old = [{"method": "lcam", "images": 4, "untrained_images": 0, "ad@100": 40.0}]
    sanity = [{"mode": "cascading", "step": 0, "layer": "fc", "method": "lcam", "spearman": 0.1}]
    units = [{"channel": 0, "class": 1, "class_name": "cat", "iou": 0.2}]
    write_report(old, tmp_path, trained_rows=old, sanity=sanity, unit_alignment=units)
    assert (tmp_path / "report.html").exists() and (tmp_path / "sanity.csv").exists()

    new = [{"method": "lcam", "images": 6, "untrained_images": 0, "ad@100": 12.5}]
    paths = write_tables(new, tmp_path)
    assert set(paths) == {"csv", "markdown"}
    with paths["csv"].open(encoding="utf-8") as handle:
        assert list(csv.DictReader(handle))[0]["ad@100"] == "12.5"
    assert "12.5" in paths["markdown"].read_text(encoding="utf-8")
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == ["comparison.csv", "comparison.md"]


def test_png_data_uri_round_trips_arrays_and_tensors() -> None:
    array = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(_decode_png(png_data_uri(array))), array)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    assert np.array_equal(np.asarray(_decode_png(png_data_uri(tensor))), array)


class RecordingWandbLogger(WandbLogger):
    """A WandbLogger that records tables instead of starting a run."""

    def __init__(self) -> None:  # no run, no network
        self.tables: list[dict] = []

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None) -> None:
        self.tables.append({"key": key, "columns": columns, "data": data})


def test_log_to_wandb_logs_one_table_row_per_method(tmp_path) -> None:
    rows = [
        {"method": "lcam", "ad@100": 10.0, "pointing_game": None},
        {"method": "gradcam", "ad@100": 20.0, "pointing_game": float("nan")},
    ]
    recorder = RecordingWandbLogger()
    other = CSVLogger(str(tmp_path))
    assert log_to_wandb([other, recorder], rows, key="test/comparison")
    (table,) = recorder.tables
    assert table["key"] == "test/comparison"
    assert table["columns"] == ["method", "ad@100", "pointing_game"]
    assert table["data"] == [["lcam", 10.0, None], ["gradcam", 20.0, None]]
    assert not log_to_wandb(other, rows) and not log_to_wandb(None, rows)


class HeaderParser(HTMLParser):
    """Header cells per table id, whether each table sits inside ``<details>``, table order."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, list[str]] = {}
        self.folded: dict[str, bool] = {}
        self.order: list[str] = []
        self._table: list[str] = []
        self._details = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "details":
            self._details += 1
        elif tag == "table":
            name = dict(attrs).get("id", "")
            self._table.append(name)
            self.order.append(name)
            self.headers[name] = []
            self.folded[name] = self._details > 0
        elif tag == "th" and self._table:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "details":
            self._details -= 1
        elif tag == "table":
            self._table.pop()
        elif tag == "th" and self._cell is not None:
            self.headers[self._table[-1]].append("".join(self._cell).rstrip(" ↑↓"))
            self._cell = None


def test_headline_table_first_and_every_column_folded_below(results, tmp_path) -> None:
    extra = {
        "road_morf@10": 0.5,
        "road_lerf@10": 0.75,
        "road_morf_mean": 0.5,
        "road_lerf_mean": 0.75,
        "energy_pointing_game": 0.4,
        "mask_iou": 0.3,
        "max_sensitivity": 0.1,
    }
    rows = [dict(row, **extra) for row in results["rows"]]
    paths = write_report(rows, tmp_path)
    parser = HeaderParser()
    parser.feed(paths["html"].read_text(encoding="utf-8"))
    headline = [
        "method",
        "forward_passes",
        "backward_passes",
        "ms_per_image",
        *(f"{kind}@{p}" for p in ("100", "50", "15") for kind in ("ad", "ic")),
        "deletion_auc",
        "deletion_auc_blur",
        "insertion_auc",
        "insertion_auc_black",
        "pointing_game",
        "energy_pointing_game",
    ]
    assert parser.headers["metrics"] == headline
    assert not parser.folded["metrics"]
    with paths["csv"].open(encoding="utf-8") as handle:
        csv_columns = next(csv.reader(handle))
    # The page shows the trained_on column as marks on the values instead.
    assert parser.headers["metrics-all"] == [c for c in csv_columns if c != "trained_on"]
    assert "trained_on" in csv_columns
    assert {"road_morf@10", "mask_iou", "images", "max_sensitivity"} <= set(csv_columns)
    assert parser.folded["metrics-all"]
    assert parser.order.index("metrics") < parser.order.index("metrics-all")


def test_a_learned_rows_two_maps_are_named_under_the_table(results, tmp_path) -> None:
    """By default a head's AD/IC score its pre-sigmoid map and its other columns the sigmoid map
    it shows: the Markdown and the page say so, for that head only."""
    assert len(results["notes"]) == 1
    (note,) = results["notes"]
    assert note.startswith("lcam: adic score its pre-sigmoid map")
    assert "deletion_insertion, pointing_game the sigmoid map it shows" in note
    paths = write_report(results["rows"], tmp_path, notes=results["notes"])
    assert f"Note: {note}" in paths["markdown"].read_text(encoding="utf-8")
    assert "learned_maps: shown scores every column" in paths["html"].read_text(encoding="utf-8")


@pytest.mark.parametrize("change", ["shown", "logit_head"])
def test_a_row_on_one_map_has_no_note(change) -> None:
    backbone = lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=6, weights=str(SHAPES_WEIGHTS), input_size=64
    )
    activation = "logit" if change == "logit_head" else "sigmoid"
    head = lcam.build_explainer(backbone, map_activation=activation)
    learned_maps = "shown" if change == "shown" else "logit"
    comparison = MethodComparison(
        backbone, {"lcam": head}, metrics=("adic", "pointing_game"), learned_maps=learned_maps
    )
    assert comparison.map_notes() == []
