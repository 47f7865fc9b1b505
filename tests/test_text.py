"""Models as users hold them: a sentence-transformers directory and Hugging Face directories
(built offline by tests/directories.py) compiled with their tokenizer; texts in, answers out, in
Python, `archfit run --text` and `archfit serve` (BYTES tensors, tritonclient), equal to
SentenceTransformer.encode and to transformers' own outputs."""
import json

import numpy as np
import pytest
import torch

import archfit
from conftest import Running, cli
from directories import SENTENCES, hf_directory, st_directory

LONG = " ".join(["the happy dog runs on the road"] * 12)  # 86 tokens: over the 48 the directory takes


def cosine(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory):
    return st_directory(tmp_path_factory.mktemp("st") / "encoder")


@pytest.fixture(scope="module")
def reference(st_dir):
    """SentenceTransformer(DIR).encode: the embeddings a compiled file must give."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_dir), device="cpu")
    return lambda texts: model.encode(texts, convert_to_numpy=True)


@pytest.fixture(scope="module")
def bucketed_file(st_dir, tmp_path_factory):
    """The directory compiled by the CLI with buckets (its token inputs vary, found from the
    directory), saved once for the Python, CLI and server tests."""
    out = tmp_path_factory.mktemp("files") / "encoder.archfit"
    r = cli("compile", str(st_dir), "--buckets", "16,48", "-o", str(out), "--no-compare")
    assert r.returncode == 0, r.stderr
    assert "buckets over input_ids[1], attention_mask[1], token_type_ids[1]: 16, 48" in r.stdout
    return out


def test_loaded_file_encodes_as_sentence_transformers_does(bucketed_file, reference):
    module = archfit.load(bucketed_file)
    texts = SENTENCES + [LONG]  # the long one cut to 48 tokens, as sentence-transformers' max_seq_length does
    got, want = module.encode(texts), reference(texts)
    assert got.shape == want.shape == (len(texts), 32)
    assert cosine(got, want).min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)  # Normalize kept
    assert np.allclose(module("she reads"), got[3], atol=1e-6)  # one text: one answer
    assert np.allclose(module.encode("she reads"), got[3], atol=1e-6)


def test_cli_run_prints_one_embedding_per_text(bucketed_file, reference, tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text("a dog runs fast on the road\n\nshe reads\n")
    r = cli("run", str(bucketed_file), "--text", SENTENCES[0], "--text-file", str(lines))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["text"] for row in rows] == [SENTENCES[0], "a dog runs fast on the road", "she reads"]
    got = np.array([row["embedding"] for row in rows])
    assert cosine(got, reference([row["text"] for row in rows])).min() > 0.9999
    r = cli("inspect", str(bucketed_file))
    assert "text in: sentence embeddings, its tokenizer carried, texts up to 48 tokens" in r.stdout


def test_server_answers_bytes_texts_with_their_embeddings(bucketed_file, reference):
    import tritonclient.http as http

    from archfit.serve import Server, load_models

    running = Running(Server(load_models([f"encoder={bucketed_file}"]), max_delay_ms=1))
    try:
        client = running.client()
        meta = client.get_model_metadata("encoder")
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 32]}]
        for binary in (True, False):
            texts = SENTENCES[:3] + [LONG]
            given = http.InferInput("text", [len(texts)], "BYTES")
            given.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
            got = client.infer("encoder", [given]).as_numpy("embedding")
            assert cosine(got, reference(texts)).min() > 0.9999
        status, body, _ = running.post("/v2/models/encoder/infer", json.dumps(
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [1]}]}).encode())
        assert status == 400 and "datatype BYTES takes strings" in body.decode()
    finally:
        running.stop()


def test_packed_file_pools_each_text_on_its_own(st_dir, reference, tmp_path):
    """Packed rows hold several texts: the file computes token states, and each text's pooling and
    Normalize run on its own tokens (pooling over a row would mix texts)."""
    import tritonclient.http as http

    from archfit.serve import Server, load_models

    out = tmp_path / "packed.archfit"
    r = cli("compile", str(st_dir), "--pack", "48", "--pack-rows", "2", "-o", str(out), "--no-compare")
    assert r.returncode == 0, r.stderr
    module = archfit.load(out)
    texts = SENTENCES + [LONG]
    got = module.encode(texts)
    assert got.shape == (len(texts), 32) and cosine(got, reference(texts)).min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    running = Running(Server(load_models([f"packed={out}"]), max_delay_ms=1))
    try:
        given = http.InferInput("text", [len(texts)], "BYTES")
        given.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        served = running.client().infer("packed", [given]).as_numpy("embedding")
        np.testing.assert_allclose(served, got, atol=1e-6, rtol=0)
    finally:
        running.stop()


def test_sentencepiece_only_directory_carries_its_converted_tokenizer(tmp_path):
    """XLM-R, T5, Marian-era directories hold a SentencePiece model and no tokenizer.json:
    transformers converts it (the `sentencepiece` reader), and the file carries the result."""
    from transformers import AutoTokenizer, XLMRobertaModel

    from directories import sentencepiece_directory

    folder = sentencepiece_directory(tmp_path / "xlmr")
    assert not (folder / "tokenizer.json").exists()
    module = archfit.load(archfit.save(archfit.trace(str(folder), target="openvino", buckets=(32,)), tmp_path / "x.archfit"))
    texts = ["the dog runs on the road", "she reads"]
    tok = AutoTokenizer.from_pretrained(folder)
    reference = XLMRobertaModel.from_pretrained(folder, add_pooling_layer=False).eval()
    for text, got in zip(texts, module(texts)):
        with torch.no_grad():
            want = reference(**tok([text], return_tensors="pt")).last_hidden_state[0].numpy()
        assert np.asarray(got).shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_text_classification_gives_labels_with_scores(tmp_path):
    """A directory's default task from its config (BertForSequenceClassification), id2label kept."""
    from transformers import AutoModelForSequenceClassification

    folder = hf_directory(tmp_path / "clf", "text-classification", num_labels=3,
                          id2label={0: "negative", 1: "neutral", 2: "positive"})
    module = archfit.trace(str(folder), target="openvino", length=16, check_payoff=False)
    answers = module(SENTENCES[:2])
    eager = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    for text, answer in zip(SENTENCES[:2], answers):
        enc = module.text.encode([text])[0]
        feed = module.text.feed(enc, 16)
        with torch.no_grad():
            p = torch.softmax(eager(**feed).logits[0], -1)
        assert answer["label"] == ["negative", "neutral", "positive"][int(p.argmax())]
        assert abs(answer["score"] - float(p.max())) < 1e-4
        assert set(answer["scores"]) == {"negative", "neutral", "positive"}
    path = archfit.save(module, tmp_path / "clf.archfit")
    again = archfit.load(path)(SENTENCES[0])
    assert again["label"] == answers[0]["label"] and again["scores"] == pytest.approx(answers[0]["scores"], abs=1e-6)


def test_directory_errors_are_one_line(tmp_path, st_dir):
    folder = hf_directory(tmp_path / "plain")
    r = cli("analyze", str(folder), "--task", "summarize")
    assert r.returncode == 1 and "task 'summarize' is not one archfit reads from a directory" in r.stderr
    r = cli("analyze", str(st_dir), "--task", "fill-mask")
    assert r.returncode == 1 and "is a sentence-transformers directory: its task is feature-extraction" in r.stderr
    (folder / "modules.json").write_text(json.dumps([{"path": "", "type": "sentence_transformers.models.Transformer"},
                                                     {"path": "x", "type": "sentence_transformers.models.LSTM"}]))
    r = cli("analyze", str(folder))
    assert r.returncode == 1 and "lists a 'LSTM' module; archfit reads Transformer, Pooling, Dense and Normalize" in r.stderr
    r = cli("analyze", "resnet18", "--task", "fill-mask")
    assert r.returncode == 1 and "--task and --length are for Hugging Face directories" in r.stderr
    from archfit.errors import ModelError
    from archfit.text.directory import TaskModel

    with_dense = TaskModel(torch.nn.Identity(), "feature-extraction", ("mean",), True, torch.nn.Linear(4, 4))
    with pytest.raises(ModelError, match="with a Dense module cannot be packed yet .* compile it with buckets"):
        with_dense.tokens_only()


def test_image_directory_takes_images_through_its_processor(tmp_path):
    """An image-classification directory (config, weights, preprocessor_config.json): images in
    (paths, bytes, PIL, arrays), labels with scores out, equal to the model on its processor's pixels."""
    from PIL import Image
    from transformers import ViTForImageClassification, ViTImageProcessor

    from directories import image_directory

    folder = image_directory(tmp_path / "vit")
    f = tmp_path / "vit.archfit"
    r = cli("compile", str(folder), "-o", str(f), "--no-compare")
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (48 + 8 * i, 40, 3), dtype=np.uint8) for i in range(3)]  # any size: resized
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(paths[-1])
    model = ViTForImageClassification.from_pretrained(folder).eval()
    processor = ViTImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        p = torch.softmax(model(**processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")).logits, -1)
    module = archfit.load(f)
    answers = module([str(paths[0]), paths[1].read_bytes(), Image.open(paths[2])])
    assert module(arrays[0]) == answers[0]
    for answer, row in zip(answers, p):
        assert answer["label"] == ["cat", "dog", "bird"][int(row.argmax())]
        assert answer["score"] == pytest.approx(float(row.max()), abs=1e-5)
        assert answer["scores"]["bird"] == pytest.approx(float(row[2]), abs=1e-5)
    r = cli("run", str(f), "--image", str(paths[0]), "--image", str(paths[1]))
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["label"] for line in r.stdout.splitlines()] == [a["label"] for a in answers[:2]]
    r = cli("inspect", str(f))
    assert "images in: image-classification, its image processor carried, 3 labels" in r.stdout
    (tmp_path / "bad.png").write_bytes(b"not an image")
    r = cli("run", str(f), "--image", str(tmp_path / "bad.png"))
    assert r.returncode == 1 and "image 0: cannot be read as an image" in r.stderr

    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    from archfit.serve import Server, load_models

    running = Running(Server(load_models([f"vit={f}"]), max_delay_ms=1))
    try:  # KServe v2 BYTES: each element an image file's bytes
        client = running.client()
        assert client.get_model_metadata("vit")["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        given = http.InferInput("image", [3], "BYTES")
        given.set_data_from_numpy(np.array([p.read_bytes() for p in paths], dtype=np.object_))
        res = client.infer("vit", [given])
        assert [x.decode() for x in res.as_numpy("label")] == [a["label"] for a in answers]
        np.testing.assert_allclose(res.as_numpy("score"), [a["score"] for a in answers], atol=1e-6)
        given = http.InferInput("image", [1], "BYTES")
        given.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="image 0: cannot be read as an image"):
            client.infer("vit", [given])
    finally:
        running.stop()


def test_detection_directory_gives_boxes_in_the_images_own_pixels(tmp_path):
    """An object-detection directory (YOLOS): detections through the processor's own
    post-processing, boxes in each image's pixels, equal to the model's within 1e-3 pixels."""
    import dataclasses

    from PIL import Image
    from transformers import YolosForObjectDetection, YolosImageProcessor

    from directories import detection_directory

    folder = detection_directory(tmp_path / "yolos")
    module = archfit.load(archfit.save(archfit.trace(str(folder), target="openvino"), tmp_path / "d.archfit"))
    assert module.image.task == "object-detection" and module.image.threshold == 0.5
    module.image = dataclasses.replace(module.image, threshold=0.0)  # random weights: every score is low
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (60 + 10 * i, 45, 3), dtype=np.uint8))
              for i in range(2)]
    model = YolosForObjectDetection.from_pretrained(folder).eval()
    processor = YolosImageProcessor.from_pretrained(folder)
    for image, got in zip(images, module(images)):
        with torch.no_grad():
            out = model(**processor(images=[image], return_tensors="pt"))
        want = processor.post_process_object_detection(out, threshold=0.0, target_sizes=[(image.height, image.width)])[0]
        assert len(got) == len(want["scores"]) == 5
        for g, score, label, box in zip(got, want["scores"], want["labels"], want["boxes"]):
            assert g["label"] == ["cat", "dog", "bird"][int(label)] and g["score"] == pytest.approx(float(score), abs=1e-5)
            assert [g["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == pytest.approx(box.tolist(), abs=1e-3)
            assert 0 <= g["box"]["xmax"] <= image.width + 1 and 0 <= g["box"]["ymax"] <= image.height + 1
