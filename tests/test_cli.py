"""The command line, end to end."""
import json
import subprocess
import sys

import pytest

from conftest import cli as run


def test_analyze_json_lists_fallback_with_source():
    r = run("analyze", "mlp-custom-op", "--tiny", "--json", "-t", "openvino", "-t", "onnxruntime")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [rep["target"] for rep in data["reports"]] == ["openvino", "onnxruntime"]
    fallback = data["reports"][0]["fallback"][0]
    assert fallback["op"] == "archfit_zoo.softclip" and "toy.py" in fallback["sources"][0]


def test_compile_prints_report_and_comparison_with_eager():
    r = run("compile", "bert-base", "--tiny", "--target", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "verdict: FITS" in r.stdout
    assert "compiled vs eager PyTorch (PASS" in r.stdout
    assert "latency (median, batch as given): eager PyTorch" in r.stdout


@pytest.mark.parametrize("args, message", [
    (("analyze", "no-such-model"), "error: model: no built-in model named 'no-such-model'"),
    (("compile", "mlp-custom-op", "--tiny", "--require-full"), "error: partition: require_full=True"),
    (("compile", "resnet18", "--tiny", "-t", "tpu"), "error: target: unknown target 'tpu'"),
])
def test_errors_exit_nonzero_with_one_line(args, message):
    r = run(*args)
    assert r.returncode == 1
    assert r.stderr.startswith(message)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_targets_lists_shipped_backends():
    r = run("targets")
    assert r.returncode == 0
    assert "openvino" in r.stdout and "onnxruntime" in r.stdout and "available" in r.stdout


def test_compile_save_inspect_run_end_to_end(tmp_path):
    import numpy as np
    import torch

    from archfit import zoo

    out = tmp_path / "r18.archfit"
    r = run("compile", "resnet18", "--tiny", "-t", "onnxruntime", "-o", str(out), "--no-compare")
    assert r.returncode == 0, r.stderr
    assert f"saved {out}" in r.stdout
    r = run("inspect", str(out))
    assert r.returncode == 0, r.stderr
    assert "target: onnxruntime on CPU, precision fp32" in r.stdout and "inputs: x[1, 3, 64, 64]:float32" in r.stdout
    assert "versions: archfit" in r.stdout and "verdict: FITS" in r.stdout
    meta = json.loads(run("inspect", str(out), "--json").stdout)
    assert meta["engines"][0]["module"] == "target_0" and meta["kind"] == meta["components"]["main"]["kind"] == "static"
    x = torch.randn(1, 3, 64, 64)
    np.save(tmp_path / "x.npy", x.numpy())
    r = run("run", str(out), "--input", f"x={tmp_path / 'x.npy'}", "-d", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    model, _ = zoo.build("resnet18", tiny=True)
    got = torch.from_numpy(np.load(tmp_path / "out" / "output.npy"))
    with torch.no_grad():
        want = model(x)
    assert (got - want).abs().max() <= 1e-5 + 1e-3 * want.abs().max()


def test_exported_program_as_model(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.export.save(torch.export.export(model, (torch.randn(2, 16),)), tmp_path / "m.pt2")
    r = run("analyze", str(tmp_path / "m.pt2"), "-t", "openvino", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reports"][0]["verdict"] == "fits"


@pytest.mark.parametrize("make_args, message", [
    (lambda d: ("run", str(d / "missing.archfit")), "error: artifact: "),
    (lambda d: ("inspect", str(d / "junk.archfit")), "error: artifact: "),
    (lambda d: ("run", str(d / "r.archfit"), "--input", "y=/nope.npy"), "error: run: input 'y': file '/nope.npy'"),
])
def test_file_command_errors(tmp_path, make_args, message):
    (tmp_path / "junk.archfit").write_bytes(b"not a zip at all")
    if "r.archfit" in " ".join(make_args(tmp_path)):
        assert run("compile", "mlp-custom-op", "--tiny", "-o", str(tmp_path / "r.archfit"), "--no-compare").returncode == 0
    r = run(*make_args(tmp_path))
    assert r.returncode == 1 and r.stderr.startswith(message), r.stderr
    assert r.stderr.count("\n") == 1


def test_python_file_function_as_model(tmp_path):
    src = tmp_path / "my_model.py"
    src.write_text(
        "import torch\n"
        "def build():\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))\n"
        "    return model, (torch.randn(4, 8),)\n"
    )
    # --no-payoff: whether ONNX Runtime beats PyTorch on three tiny ops is a timing a loaded host
    # can flip (the suite once dropped the partition); the file's function is what is tested here
    r = run("compile", f"{src}:build", "-t", "onnxruntime", "--json", "--no-compare", "--no-payoff")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["model"] == "build" and data["validation"]["ok"] and len(data["partitions"]) == 1, data
    assert data["latency_ms"] is None  # --no-compare
    r = run("analyze", f"{src}:missing")
    assert r.returncode == 1 and "has no function 'missing'" in r.stderr


def test_seq2seq_compile_generate_end_to_end(tmp_path):
    import torch

    from archfit import zoo
    model = zoo.build("marian-en-de", tiny=True)[0].model
    model.save_pretrained(tmp_path / "marian")  # a text2text-generation directory, as users hold one
    from directories import tokenizer
    tok = tokenizer(tmp_path / "marian")  # a WordPiece tokenizer within the tiny model's 512 ids
    r = run("compile", str(tmp_path / "marian"))
    assert r.returncode == 1 and "is a text2text-generation model" in r.stderr and "--generate" in r.stderr
    f = tmp_path / "marian.archfit"
    # beams are checked token for token in test_generation.py; here the command line's path, greedy
    r = run("compile", str(tmp_path / "marian"), "--generate", "--max-new-tokens", "8", "--num-beams", "1",
            "--source-buckets", "8", "-o", str(f), "--no-compare")
    assert r.returncode == 0, r.stderr
    assert "same tokens: yes" in r.stdout and "not timed (--no-compare)" in r.stdout
    r = run("inspect", str(f))
    assert r.returncode == 0 and "seq2seq generator: source buckets [8]" in r.stdout
    assert "text in: text2text-generation, its tokenizer carried, texts up to 8 tokens" in r.stdout
    r = run("generate", str(f), "--text", "the cat sees a bird", "--text", "a dog", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    source = tok(["the cat sees a bird", "a dog"], padding=True, return_tensors="pt")
    ids = source["input_ids"].masked_fill(source["attention_mask"] == 0, model.config.pad_token_id)
    want = model.generate(ids, attention_mask=source["attention_mask"], max_new_tokens=5, num_beams=1)
    assert r.stdout.splitlines() == tok.batch_decode(want, skip_special_tokens=True)
    r = run("generate", str(f), "--ids", "5,6,7,8,9", "--max-new-tokens", "6")
    assert r.returncode == 0, r.stderr
    want = model.generate(torch.tensor([[5, 6, 7, 8, 9]]), max_new_tokens=6, num_beams=1)
    assert r.stdout.strip() == ",".join(map(str, want[0].tolist()))
    r = run("generate", str(f), "--ids", "5,6,7,8,9", "--max-new-tokens", "6", "--num-beams", "2")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "beam" in r.stderr, r.stderr
    r = run("run", str(f))
    assert r.returncode == 1 and "use `archfit generate" in r.stderr


@pytest.mark.parametrize("make_args, message", [
    (lambda d: ("compile", "bert-base", "--tiny", "--vary", "input_ids:1", "--vary", "attention_mask:1", "--buckets",
                "10,5"), None),
    (lambda d: ("compile", "bert-base", "--tiny", "--vary", "input_ids:1", "--buckets", "10,5"),
     "error: capture: bert-base (tiny): "),  # the mask, left at 16, no longer fits: one line, not a traceback
    (lambda d: ("compile", "bert-base", "--tiny", "--vary", "input_ids:5", "--buckets", "8"),
     "error: archfit: buckets: input 'input_ids' has 2 dims, so dim 5 cannot vary"),
    (lambda d: ("compile", "bert-base", "--tiny", "--vary", "input_ids:1", "--lengths", str(d / "huge.json")),
     "error: options: Buckets sample= must hold the sizes seen, each from 1 to 1048576"),
    (lambda d: ("compile", "resnet18", "--tiny", "-o", str(d / "missing" / "r.archfit")),
     "error: artifact: output {d}/missing/r.archfit: directory {d}/missing does not exist"),
    (lambda d: ("compile", "resnet18", "--tiny", "-o", "/dev/null"), "error: artifact: output /dev/null is not a regular"),
    (lambda d: ("compile", "resnet18", "--tiny", "-o", str(d)), "error: artifact: output {d} is a directory"),
    (lambda d: ("analyze", f"{d / 'raises.py'}:build"), "error: model: {d}/raises.py:build raised ZeroDivisionError at"),
    (lambda d: ("inspect", str(d / "deep.archfit")), "error: artifact: {d}/deep.archfit: manifest.json is nested too"),
])
def test_bad_options_and_files_are_one_line_with_exit_1(tmp_path, make_args, message):
    (tmp_path / "huge.json").write_text("[1000000000]")
    (tmp_path / "raises.py").write_text("def build():\n    return 1 / 0\n")
    import zipfile

    with zipfile.ZipFile(tmp_path / "deep.archfit", "w") as z:
        z.writestr("manifest.json", "[" * 50_000 + "]" * 50_000)
    r = run(*make_args(tmp_path))
    code, out, err = r.returncode, r.stdout, r.stderr
    if message is None:  # sizes given in any order are sorted, as the API does
        assert code == 0 and "buckets over input_ids[1], attention_mask[1]: 5, 10" in out, err
        assert "latency: not compared, the example inputs do not fit: run: input 'input_ids' dim 1 has size 16" in out
        return
    assert code == 1 and err.startswith(message.format(d=tmp_path)), err
    assert err.count("\n") == 1


def test_ctrl_c_while_importing_is_one_line():
    import signal
    import time

    # as from a terminal: the test process may ignore SIGINT (an xdist worker can), and an ignored
    # signal stays ignored across exec, so the child gets the default disposition back first
    p = subprocess.Popen([sys.executable, "-m", "archfit", "analyze", "resnet18", "--tiny"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait until torch's libraries are mapped (inside its import, or past it), however slow the
    # machine: a fixed sleep could land in the interpreter's own start-up, where no code can catch it
    maps, deadline = f"/proc/{p.pid}/maps", time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        with open(maps) as f:
            if "libtorch" in f.read():
                break
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err and err.count("\n") <= 1, err


def test_library_names_take_random_or_given_weights(tmp_path):
    """torchvision:NAME and timm:NAME: the architecture users know, random weights or --weights."""
    import torch
    from safetensors.torch import save_file

    from archfit.cli.library import load_library_model

    model, inputs, name = load_library_model("torchvision:mobilenet_v3_small")
    assert name == "torchvision:mobilenet_v3_small (random weights)" and inputs[0].shape == (1, 3, 224, 224)
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    for weights in ("w.safetensors", "w.pt"):
        loaded, _, _ = load_library_model("torchvision:mobilenet_v3_small", str(tmp_path / weights))
        assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    timm_model, timm_inputs, _ = load_library_model("timm:resnet18")
    assert timm_model(*timm_inputs).shape == (1, 1000)
    r = run("analyze", "torchvision:mobilenet_v3_small", "--weights", str(tmp_path / "w.safetensors"), "-t", "inf1")
    assert r.returncode == 0, r.stderr
    assert "mobilenet_v3_small" in r.stdout
    for args, message in ((["torchvision:resnet_18"], "torchvision has no model 'resnet_18' (close names: resnet18"),
                          (["timm:resnet18", "--weights", str(tmp_path / "w.safetensors")],
                           "does not fit timm:resnet18: missing"),
                          (["mlp-custom-op", "--weights", str(tmp_path / "w.pt")],
                           "--weights is for torchvision:NAME and timm:NAME models")):
        r = run("analyze", *args)
        assert r.returncode == 1 and message in r.stderr, r.stderr
