"""Evaluating a run: the reconstruction cost of each layer, the fine-tuned model's test figures."""

from stackae import backend, stopping
from stackae.config import PREDICT_BATCH
from stackae.workflows.common import as_input, load_stack, open_run
from stackae.workflows.data import labelled, load_run_data, targets


def evaluate_job(
    run_dir, data=None, *, data_options=None, quiet_backend=True, data_changed_ok=False
):
    """Open the run, start the backend, evaluate on its test split (or the data given).

    It changes nothing, so a stop request (Ctrl-C, SIGTERM) stops it where it lands.
    """
    with stopping.at_once():
        run = open_run(run_dir)
        backend.start(verbose=not quiet_backend)
        stopping.check()
        record = run.finetune_data if data is None else run.data
        loaded = load_run_data(
            run, data, record=record, changed_ok=data_changed_ok, **(data_options or {})
        )
        stopping.check()
        return evaluate_run(run, loaded)


def evaluate_run(run, data):
    """Test error and confusion counts of the classifier, reconstruction cost of each layer.

    Computed on the test split; data without one is evaluated on its validation
    rows, else its training rows, and `split` ("test", "valid", "train") says
    which: a figure of rows the model trained or chose its epoch on is no test figure.
    """
    from stackae import export
    from stackae.data import batches, check_width
    from stackae.finetuning import confusion_counts, error_rate, regression_metrics
    from stackae.stack import layer_codes

    stack = load_stack(run)
    name = "test" if data.test is not None else "valid" if data.valid is not None else "train"
    split = {"test": data.test, "valid": data.valid, "train": data.train}[name]
    check_width(split.x, run.data.n_features, "evaluation data")
    result = {"rows": int(len(split.x)), "split": name, "reconstruction": []}
    codes = as_input(split.x, run.input_shape)
    for k, layer in enumerate(stack.encoder_layers):
        autoencoder = stack.autoencoder(k)
        autoencoder.compile()
        cost = autoencoder.evaluate(batches(codes, PREDICT_BATCH), verbose=0, return_dict=True)
        result["reconstruction"].append(float(cost["loss"]))
        if k + 1 < len(stack.encoder_layers):
            codes = stack.layer_input(k + 1, layer_codes(layer, codes))  # one layer up
    record = run.finetune
    if run.model_file in run.files and record is not None and record.finished:
        if split.y is not None:
            # The saved model takes raw features; these rows are scaled already.
            model = export.on_scaled_rows(run.load_model(run.model_file))
            if record.spec.task == "regression":
                x, y = targets(split, "evaluation data")
                result["regression"] = regression_metrics(model, as_input(x, run.input_shape), y)
            else:
                n_classes = model.output_shape[-1]
                x, y = labelled(split, "evaluation data", n_classes)
                x = as_input(x, run.input_shape)
                result["error"] = error_rate(model, x, y)
                result["confusion"] = confusion_counts(model, x, y, n_classes).tolist()
    return result
