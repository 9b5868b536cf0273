"""One default per value: the library, the command line and the estimators make the same run."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from stackae import config, workflows
from stackae.config import FinetuneSpec
from stackae.errors import ParameterError
from stackae.sklearn import SdAClassifier, SdARegressor
from stackae_cli.main import cli


def ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def small_table(path, rows=40):
    """Features on different scales (cross-entropy cannot take them raw) and a real target."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(rows, 4)) * [0.1, 1.0, 10.0, 100.0] + [0.0, -3.0, 50.0, 0.0]
    y = x[:, 0] * 10 + x[:, 1] + rng.normal(size=rows)
    table = np.column_stack([x, y])
    np.savetxt(path, table, delimiter=",", header="a,b,c,d,y", comments="")
    return path


def recorded(run):
    return json.loads((run / "manifest.json").read_text())


def test_library_and_command_line_make_the_same_run(tmp_path):
    """The library's defaults for standardised features are the command line's."""
    data = small_table(tmp_path / "t.csv")
    options = {"scale": "standard", "label_column": "y"}
    library = workflows.pretrain_job(
        tmp_path / "library", data=str(data), data_options=options, verbose=0
    )
    assert library.specs[0].decoder_activation == "linear"  # not the tutorial's sigmoid
    assert library.specs[0].loss == "squared-error"
    command = tmp_path / "command"
    ok(
        "pretrain",
        "--data",
        data,
        "--scale",
        "standard",
        "--label-column",
        "y",
        "-q",
        "--out",
        command,
    )
    ran = workflows.open_run(command)
    assert ran.specs == library.specs and ran.seed == library.seed
    assert ran.data.options == library.data.options
    # The same seed, data and settings: the same training, to float rounding.
    np.testing.assert_allclose(
        ran.layer(0).history["loss"], library.layer(0).history["loss"], rtol=1e-4
    )

    # Regression fine-tuning: the same recorded spec (the regression learning rate and momentum).
    workflows.finetune_job(library.path, FinetuneSpec(task="regression", epochs=2), verbose=0)
    ok("finetune", command, "--task", "regression", "--epochs", "2", "-q")
    spec = recorded(command)["finetune"]["spec"]
    assert spec == recorded(library.path)["finetune"]["spec"]
    assert spec["learning_rate"] == config.TASK_DEFAULTS["regression"]["learning_rate"]
    assert spec["momentum"] == config.TASK_DEFAULTS["regression"]["momentum"]


def test_the_task_decides_the_fine_tuning_defaults_everywhere():
    for task, defaults in config.TASK_DEFAULTS.items():
        spec = FinetuneSpec(task=task)
        assert (spec.learning_rate, spec.momentum) == (
            defaults["learning_rate"],
            defaults["momentum"],
        )
    assert FinetuneSpec(task="regression", learning_rate=0.2).learning_rate == 0.2
    assert FinetuneSpec().learning_rate == 0.1  # the tutorial's
    regression = config.TASK_DEFAULTS["regression"]["learning_rate"]
    classification = config.TASK_DEFAULTS["classification"]["learning_rate"]
    for layers in ((100,), (20,), (1000,)):  # the rate does not depend on the units
        assert SdARegressor(layers)._finetune_spec(50).learning_rate == regression
        assert SdAClassifier(layers)._finetune_spec(50).learning_rate == classification
    assert SdARegressor(finetune_learning_rate=0.05)._finetune_spec(50).learning_rate == 0.05


def test_estimators_take_the_library_layer_defaults_for_their_scaling():
    assert SdARegressor((7,))._specs(50) == config.layer_specs(
        (7,), scale="standard", corruption=0.1, epochs=10, batch_size=32
    )
    (spec,) = SdARegressor((7,), scale="minmax")._specs(50)
    assert (spec.decoder_activation, spec.loss) == ("sigmoid", "cross-entropy")


# ---------------------------------------------------------------- one table per spec


def test_each_spec_field_is_checked_by_its_table():
    for spec, fields in (
        (config.LayerSpec, config.LAYER_FIELDS),
        (FinetuneSpec, config.FINETUNE_FIELDS),
    ):
        names = {f.name for f in dataclasses.fields(spec)}
        assert set(fields) == names  # every field has a row, every row a field
        for field in fields.values():
            if field.kind is str or field.name == "corruption":
                continue
            outside = field.low - 1 if field.low is not None else field.high + 1
            with pytest.raises(ParameterError, match=f"`{field.name}` must be") as err:
                spec(**{field.name: outside})
            assert err.value.param == field.name


def test_autoencoder_takes_the_specs_rules():
    import stackae

    with pytest.raises(ParameterError) as err:
        stackae.AutoEncoder(5, sparsity_target=1.0)
    assert str(err.value) == config.LAYER_FIELDS["sparsity_target"].describe().join(
        ["`sparsity_target` must be ", ". Received: sparsity_target=1.0"]
    )


def test_estimators_name_their_own_parameters():
    x, y = np.random.default_rng(0).random((30, 3)), np.arange(30) % 2
    for name, value in (("finetune_learning_rate", -1), ("finetune_epochs", 0), ("dropout", 1.0)):
        with pytest.raises(ValueError, match=f"'{name}' parameter of SdAClassifier") as err:
            SdAClassifier(**{name: value}).fit(x, y)
        assert "`learning_rate`" not in str(err.value)
    constraints = SdARegressor._parameter_constraints
    assert str(constraints["momentum"][0]) == "a float in the range [0.0, 1.0)"
    assert str(constraints["epochs"][0]) == "an int in the range [1, inf)"


def test_command_line_ranges_come_from_the_tables(tmp_path):
    text = " ".join(CliRunner().invoke(cli, ["finetune", "--help"]).output.split())
    assert "Epochs without a better validation error before stopping. [default: 10; x>=1]" in text
    # Gaussian noise takes levels above 1 (a stddev): reconstruct no longer caps them at 1.
    from stackae_cli.main import field_type

    level = field_type(config.LAYER_FIELDS["corruption"])
    assert level.convert("1.5", None, None) == 1.5  # the run's noise kind decides (check_noise)
    result = CliRunner().invoke(cli, ["reconstruct", str(tmp_path), "--corruption", "-0.5"])
    assert result.exit_code == 2 and "--corruption" in result.output


def test_one_rule_for_split_sizes():
    from stackae.data.splits import check_size

    for good in (0, 5, 0.0, 0.25, np.int64(3), np.float32(0.5), None):
        check_size("valid_size", good)
    for bad in (-1, 1.0, 1.5, float("nan"), True, "0.1"):
        assert not config.is_split_size(bad)
        with pytest.raises(ParameterError, match="`test_size` must be"):
            check_size("test_size", bad)


# ---------------------------------------------------------------- codes the layer above reads


def test_a_layer_above_relu_codes_gets_the_squared_error_and_a_linear_decoder():
    # The cross-entropy on relu codes "trained" to a cost of -1e33; the layer above an
    # encoder whose codes leave [0, 1] gets the real-valued settings, as standardised inputs.
    first, second = config.layer_specs((50, 40), activation="relu")
    assert (first.loss, first.decoder_activation) == ("cross-entropy", "sigmoid")
    assert (second.loss, second.decoder_activation) == ("squared-error", "linear")
    assert second.learning_rate == pytest.approx(1 / 40)
    conv, dense = config.layer_specs("conv8x5,pool2,30", activation=("tanh", "sigmoid"))
    assert dense.loss == "squared-error" and conv.loss == "cross-entropy"
    top = config.layer_specs((50, 40, 30), activation=("relu", "sigmoid", "sigmoid"))[2]
    assert (top.loss, top.learning_rate) == ("cross-entropy", 0.1)  # sigmoid codes below it
    # What the user gives still goes over the defaults.
    assert (
        config.layer_specs((50, 40), activation="relu", learning_rate=0.01)[1].learning_rate == 0.01
    )


def test_a_cross_entropy_above_codes_outside_the_unit_interval_is_refused():
    import stackae

    specs = [
        config.LayerSpec(units=50, activation="relu"),
        config.LayerSpec(units=40),  # the tutorial's cross-entropy
    ]
    with pytest.raises(ParameterError, match="Layer 2's cross-entropy needs codes in") as err:
        stackae.Stack(specs)
    assert err.value.param == "loss" and "\n" not in str(err.value)
    specs[1] = config.LayerSpec(units=40, loss="squared-error", decoder_activation="linear")
    assert len(stackae.Stack(specs).specs) == 2
