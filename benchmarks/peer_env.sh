#!/usr/bin/env bash
# A second environment for benchmarks whose peers pin older libraries than archfit's own
# (optimum-intel 2.2 pins transformers < 5.6): torch from the same wheels, the peers, and archfit
# from this checkout. Used by benchmarks/decoder_generation.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-peers/bin/python ] || python3 -m venv .venv-peers
.venv-peers/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv-peers/bin/pip install -q "optimum-intel[openvino]==2.2.0" "transformers<5.6"
.venv-peers/bin/pip install -q -e .
