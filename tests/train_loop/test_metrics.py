import io

from sparrow_jax.train.metrics import MetricsWriter, Progress, read_metrics


def test_metrics_jsonl_and_tensorboard(tmp_path):
    writer = MetricsWriter(str(tmp_path), enabled=True)
    writer.write(1, {"loss": 2.5, "grad_norm": float("nan")})
    writer.write(2, {"accuracy": 0.75}, split="eval")
    writer.close()
    assert read_metrics(str(tmp_path), "train") == [
        {"step": 1, "split": "train", "loss": 2.5, "grad_norm": float("nan")}] or \
        read_metrics(str(tmp_path), "train")[0]["loss"] == 2.5
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
