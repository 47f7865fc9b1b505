"""TensorFlow/Keras models through the same pipeline (frontends/): reports name TF ops and Keras
layers, compiled outputs equal TensorFlow's own, buckets and dynamic batch on a Keras text model,
a file that loads where TensorFlow cannot be imported, NMS kept on the host, the CLI on a
SavedModel, one-line errors. ONNX and MXNet: test_frontends.py."""
import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import archfit
from conftest import cli
from test_frontends import close

if importlib.util.find_spec("tensorflow") is None:  # installed by `make test` (archfit[tensorflow])
    pytest.skip("tensorflow is not installed", allow_module_level=True)


class _OnFirstUse:
    """`tf`, imported when a test first uses it: both xdist workers collect this file and only one
    runs it, and TensorFlow's import costs the other about 4 s of CPU for nothing."""

    def __getattr__(self, name):
        if name.startswith("_") or name == "pytestmark":  # what pytest's collection asks every module name
            raise AttributeError(name)
        import tensorflow

        return getattr(tensorflow, name)


tf = _OnFirstUse()
from archfit.zoo import keras_models  # noqa: E402


@pytest.fixture(scope="module")
def keras_cnn():
    return keras_models.keras_resnet50(tiny=True)


@pytest.fixture(scope="module")
def keras_text():
    return keras_models.keras_bert(tiny=True)


@pytest.fixture(scope="module")
def text_buckets(keras_text):
    """Converted the way large Keras models are (weights as inputs, folded back by the importer),
    which the full-size BERT-base takes; the tiny CNN takes the frozen way."""
    from archfit.frontends import tensorflow as frontend

    model, inputs = keras_text
    buckets = archfit.Buckets({"input_ids": 1, "attention_mask": 1}, sizes=(8, 16))
    limit, frontend._FROZEN_MAX_BYTES = frontend._FROZEN_MAX_BYTES, 0
    try:
        return archfit.trace(model, inputs, "openvino", buckets=buckets, dynamic_batch=True)
    finally:
        frontend._FROZEN_MAX_BYTES = limit


def test_keras_model_matches_tensorflow_and_names_tf_ops_and_layers(keras_cnn):
    model, x = keras_cnn
    # one conversion: the analysis (a max pool forced to the CPU, to see it named) compiles too
    analysis = archfit.analyze(model, x, targets=["openvino", "inf1", "inf2"], force_cpu=["max_pool2d"])
    sources = [s for g in analysis["openvino"].fallback for s in g.sources]
    assert any("Keras layer pool1" in s and s.startswith("TF MaxPool") for s in sources), sources
    for chip in ("inf1", "inf2"):  # the accelerator profiles see the same graph
        assert analysis[chip].partitions and analysis[chip].estimate is not None
    compiled = analysis.compile("openvino", check_payoff=False)  # a loaded machine can tip the tiny model's timing
    assert not compiled.report.fallback  # force_cpu was the analysis's, not the compile's
    want = model(x, training=False).numpy()
    other = np.random.default_rng(1).random(x.shape, "float32")
    got = compiled(tf.constant(other))
    assert isinstance(got, tf.Tensor)  # TensorFlow is loaded: its own tensor type comes back
    close(got.numpy(), model(other, training=False).numpy())
    close(compiled(x).numpy(), want)
    ops = {s.op for s in compiled.report.source_ops}
    assert {"TF Conv2D", "TF MatMul"} <= ops, ops
    text = compiled.report.to_text()
    assert "by TF op" in text and "vs TensorFlow itself" in text


def test_keras_text_model_buckets_and_dynamic_batch(keras_text, text_buckets):
    model, _ = keras_text
    assert text_buckets.sizes == (8, 16)
    rng = np.random.default_rng(2)
    for batch, length in ((3, 5), (1, 16), (5, 9)):  # batches above and below the example's 2
        ids = rng.integers(1, 100, (batch, length), dtype=np.int32)
        mask = np.ones((batch, length), np.int32)
        got = text_buckets({"input_ids": ids, "attention_mask": mask})
        want = model([ids, mask], training=False)
        for g, w in zip(got, want):
            close(np.asarray(g), w.numpy())


def test_saved_file_runs_where_tensorflow_cannot_be_imported(keras_text, text_buckets, tmp_path):
    model, _ = keras_text
    path = archfit.save(text_buckets, tmp_path / "text.archfit")
    ids = np.random.default_rng(3).integers(1, 100, (2, 11), dtype=np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    np.savez(tmp_path / "in.npz", input_ids=ids, attention_mask=mask)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError from here on
        import numpy as np, archfit
        try:
            import tensorflow
            raise SystemExit("tensorflow imported")
        except ImportError:
            pass
        m = archfit.load({str(path)!r})
        feed = dict(np.load({str(tmp_path / 'in.npz')!r}))
        out = m(feed["input_ids"], feed["attention_mask"])
        assert all(isinstance(o, np.ndarray) for o in out), [type(o) for o in out]
        np.savez({str(tmp_path / 'out.npz')!r}, *out)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.load(tmp_path / "out.npz")
    want = model([ids, mask], training=False)
    real = mask.astype(bool)
    close(got["arr_0"][real], want[0].numpy()[real])  # padded positions are the caller's to ignore
    close(got["arr_1"], want[1].numpy())


def test_tf_detector_keeps_nms_on_the_host():
    detector, image = keras_models.tf_detector(tiny=True)
    analysis = archfit.analyze(detector, image, targets=["openvino"])
    text = analysis.to_text()
    assert "TF CombinedNonMaxSuppression 'combined_non_max_suppression/CombinedNonMaxSuppression'" in text
    assert "OnnxModule.head" in text  # the backbone and head before NMS are the compiled region
    # the tiny head is timed against eager by the payoff check, which a loaded machine can tip;
    # what this test is about is where NMS runs
    compiled = analysis.compile("openvino", check_payoff=False)
    assert isinstance(compiled, archfit.AttachedModule) and list(compiled.regions) == ["head"]
    got, want = compiled(image), detector(tf.constant(image))
    for key in ("boxes", "scores", "classes", "count"):
        g, w = np.asarray(got[key]), want[key].numpy()
        close(np.sort(g.reshape(-1)), np.sort(w.reshape(-1)))


def test_cli_compiles_a_savedmodel(keras_cnn, tmp_path):
    model, x = keras_cnn
    saved = tmp_path / "cnn_saved"
    model.export(str(saved), verbose=False)  # Keras 3: a SavedModel with a serving_default signature
    out = tmp_path / "cnn.archfit"
    done = cli("compile", str(saved), "-t", "openvino", "-o", str(out), "--no-compare")
    assert done.returncode == 0, done.stderr
    assert "vs TensorFlow itself" in done.stdout and "TF Conv2D" in done.stdout
    loaded = archfit.load(out)
    close(np.asarray(loaded(x[:1])), model(x[:1], training=False).numpy())  # the signature's batch is open: 1


def test_savedmodel_without_serving_signature_says_so(tmp_path):
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "nosig"))
    done = cli("analyze", str(tmp_path / "nosig"))
    assert done.returncode != 0
    assert "has no 'serving_default' signature" in done.stderr + done.stdout


def two_conv_net():
    """A keras.Model subclass, as users write them: Conv2D + BatchNormalization twice (defined in a
    function: the class statement needs TensorFlow, which collection does not import)."""

    class TwoConvNet(tf.keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            layers = tf.keras.layers
            self.conv1, self.norm1 = layers.Conv2D(8, 3, padding="same"), layers.BatchNormalization()
            self.conv2, self.norm2 = layers.Conv2D(16, 3, padding="same"), layers.BatchNormalization()
            self.pool, self.head = layers.GlobalAveragePooling2D(), layers.Dense(5)

        def call(self, x, training=False):
            x = tf.nn.relu(self.norm1(self.conv1(x), training=training))
            x = tf.nn.relu(self.norm2(self.conv2(x), training=training))
            return self.head(self.pool(x))

    return TwoConvNet()


def _trained_norms(model, x):
    model(x)  # built
    rng = np.random.default_rng(3)
    for norm in (model.norm1, model.norm2):  # statistics as training leaves them, not the identity
        gamma, beta, mean, var = norm.get_weights()
        norm.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                          rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2, var.shape)])
    return model


def test_keras_subclass_traces_and_reports_its_convolutions():
    x = np.random.default_rng(0).random((1, 32, 32, 3), "float32")
    model = _trained_norms(two_conv_net(), x)
    compiled = archfit.trace(model, x, "openvino", check_payoff=False)
    np.testing.assert_allclose(np.asarray(compiled(x)), model(x, training=False).numpy(), atol=1e-4, rtol=1e-4)
    ops = {s.op: s for s in compiled.report.source_ops}
    total = sum(s.flops for s in ops.values())
    # each convolution, its norm folded in, is the Conv2D it was (not an ONNX 'Conv' or the norm's 'TF Mul')
    assert ops["TF Conv2D"].count == 2 and ops["TF Conv2D"].flops > 0.9 * total, ops


def test_keras_and_h5_files_compile_on_the_cli(tmp_path):
    inputs = tf.keras.Input((16, 16, 3), name="image")
    x = tf.keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    outputs = tf.keras.layers.Dense(3)(tf.keras.layers.GlobalAveragePooling2D()(x))
    model = tf.keras.Model(inputs, outputs)
    image = np.random.default_rng(1).random((1, 16, 16, 3), "float32")
    for name in ("cnn.keras", "cnn.h5"):
        model.save(tmp_path / name)
        out = tmp_path / (name + ".archfit")
        done = cli("compile", str(tmp_path / name), "-o", str(out), "--no-compare")
        assert done.returncode == 0, done.stderr
        assert "vs TensorFlow itself" in done.stdout and "TF Conv2D" in done.stdout
        np.testing.assert_allclose(np.asarray(archfit.load(out)(image)), model(image, training=False).numpy(),
                                   atol=1e-4, rtol=1e-4)
    compiled = archfit.trace(str(tmp_path / "cnn.keras"), {"image": image}, "onnxruntime")
    np.testing.assert_allclose(np.asarray(compiled(image)), model(image, training=False).numpy(), atol=1e-4, rtol=1e-4)
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    done = cli("analyze", str(tmp_path / "broken.keras"))
    assert done.returncode == 1 and "broken.keras: Keras could not load it" in done.stderr
