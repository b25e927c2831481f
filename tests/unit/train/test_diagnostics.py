from transferkit.train.diagnostics import curves_from_history, detect_overfitting, overfitting_message


def _history(train, evals):
    history = [{"step": s, "loss": v, "grad_norm": 1.0, "learning_rate": 1e-4} for s, v in train]
    history += [{"step": s, "eval_loss": v, "eval_accuracy": 0.5, "eval_runtime": 1.0} for s, v in evals]
    return sorted(history, key=lambda e: e["step"])


def test_curves_are_extracted_and_later_entries_win():
    history = [*_history([(1, 0.9), (2, 0.8)], [(2, 0.7)]), {"step": 2, "loss": 0.75}]
    curves = curves_from_history(history)
    assert curves.train_steps == [1, 2] and curves.train_loss == [0.9, 0.75]
    assert curves.eval_steps == [2] and curves.eval_metrics == {"accuracy": [0.5], "loss": [0.7]}
    assert curves.grad_norm == [1.0, 1.0]


def test_overfitting_is_flagged_when_validation_rises_while_training_falls():
    train = [(s, 1.0 - 0.05 * s) for s in range(1, 11)]
    rising = [(2, 0.50), (4, 0.55), (6, 0.60), (8, 0.65), (10, 0.70)]
    episodes = detect_overfitting(curves_from_history(_history(train, rising)))
    assert len(episodes) == 1
    assert (episodes[0]["from_step"], episodes[0]["to_step"]) == (2, 8)
    assert "possible overfitting: validation loss rose 0.5000 -> 0.6500" in overfitting_message(episodes[0])


def test_no_flag_when_both_fall_or_the_streak_is_short():
    train = [(s, 1.0 - 0.05 * s) for s in range(1, 11)]
    falling = [(2, 0.7), (4, 0.6), (6, 0.5), (8, 0.45), (10, 0.44)]
    assert detect_overfitting(curves_from_history(_history(train, falling))) == []
    bumpy = [(2, 0.5), (4, 0.55), (6, 0.6), (8, 0.58), (10, 0.6)]
    assert detect_overfitting(curves_from_history(_history(train, bumpy))) == []
