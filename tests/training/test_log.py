"""The run's CSV log and its plot."""

import csv

import matplotlib.image

from training.log import CsvLog, plot


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_columns_grow_as_new_figures_appear(tmp_path):
    path = tmp_path / "run.csv"
    log = CsvLog(path, append=False)
    log.write({"step": 1, "loss": 0.5})
    log.write({"step": 1, "miou": 0.7})
    assert path.read_text().splitlines()[0] == "step,loss,miou"
    assert _rows(path) == [{"step": "1", "loss": "0.5", "miou": ""}, {"step": "1", "loss": "", "miou": "0.7"}]


def test_a_resumed_log_keeps_the_rows_up_to_the_checkpoint_and_redoes_the_rest(tmp_path):
    path = tmp_path / "run.csv"
    first = CsvLog(path, append=False)
    for step in (1, 2, 3, 4):
        first.write({"step": step, "loss": 1.0 / step})
    resumed = CsvLog(path, append=True)
    resumed.trim(2)
    resumed.write({"step": 3, "loss": 0.1})
    assert [(r["step"], r["loss"]) for r in _rows(path)] == [("1", "1.0"), ("2", "0.5"), ("3", "0.1")]
    assert CsvLog(path, append=False).rows == []  # a fresh run starts a fresh log


def test_only_the_writing_process_writes(tmp_path):
    path = tmp_path / "run.csv"
    CsvLog(path, append=False, enabled=False).write({"step": 1, "loss": 0.5})
    assert not path.exists()


def test_the_plot_draws_losses_above_and_validation_figures_below(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    log = CsvLog(tmp_path / "run.csv", append=False)
    for step in range(1, 5):
        log.write({"step": step, "loss": 1.0 / step, "focal": 0.5 / step, "agreement": 0.9})
    log.write({"step": 4, "miou": 0.8})
    plot(log.path, tmp_path / "run.png")
    top, bottom = closed[0].axes
    assert [line.get_label() for line in top.lines] == ["loss", "focal"]  # not every column: the loss terms
    assert [list(line.get_xdata()) for line in top.lines] == [[1, 2, 3, 4]] * 2
    assert [(line.get_label(), list(line.get_ydata())) for line in bottom.lines] == [("miou", [0.8])]
    assert matplotlib.image.imread(tmp_path / "run.png").shape[:2] == (600, 800)  # 8 x 6 inches at 100 dpi
