import io
import math

from sparrow_jax.train.metrics import MetricsWriter, Progress, read_metrics


def test_metrics_jsonl_and_tensorboard(tmp_path):
    writer = MetricsWriter(str(tmp_path), enabled=True)
    writer.write(1, {"loss": 2.5, "grad_norm": float("nan")})
    writer.write(2, {"accuracy": 0.75}, split="eval")
    writer.close()
    (train_record,) = read_metrics(str(tmp_path), "train")
    assert train_record["step"] == 1 and train_record["loss"] == 2.5
    assert math.isnan(train_record["grad_norm"])  # non-finite values are kept, not dropped
    assert read_metrics(str(tmp_path), "eval") == [{"step": 2, "split": "eval", "accuracy": 0.75}]
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_progress_prints_lines_with_rate_and_eta_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(total=20, log_every=10, enabled=True, stream=stream)
    for step in range(1, 21):
        progress.update(step, {"loss": 1.0 / step})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[train] step 10/20") and "steps/s" in lines[0] and "eta" in lines[0]
    assert "loss=0.1" in lines[0]
