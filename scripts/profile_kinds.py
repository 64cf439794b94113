"""Reads `perf script` output (call stacks) and prints the share of samples per op kind.

A sample's kind is decided by the first rule (in order) that matches any frame of its stack, so
outer context wins where it matters (a GEMM inside the loss counts as loss, one inside a conv's
weight gradient as weight gradient). Rayon's workers carry no caller frames, so set-up samples are
not told apart: the script runs enough steps for them to be a small share (the data kind shows it).
"""
import re
import sys
from collections import Counter

RULES = [
    ("data pipeline (loader threads)", r"yolodistill::data::|zune_jpeg|image::codecs"),
    ("loss and assigner", r"yolodistill::loss::"),
    ("optimizer / EMA / grad clip", r"yolodistill::train::optim|yolodistill::train::ema|clip_global_norm"),
    ("conv input-grad (burn)", r"conv2d_x_backward|conv_transpose"),
    ("conv weight-grad (burn)", r"conv2d_weight_backward|weight_grad"),
    ("conv backward (ours: input + weight grad)", r"yolodistill::kernels::conv::backward"),
    ("conv forward (ours)", r"yolodistill::kernels::conv::forward"),
    ("conv forward (burn)", r"burn_flex::ops::conv::"),
    ("BatchNorm+SiLU backward (ours)", r"yolodistill::kernels::norm::backward"),
    ("BatchNorm+SiLU forward and statistics (ours)", r"yolodistill::kernels::norm::"),
    ("BatchNorm (burn)", r"batch_norm|burn_nn::modules::norm::batch"),
    ("max-pool (SPPF)", r"max_pool"),
    ("concat / split / upsample", r"ops::cat|slice|interpolate|narrow|chunk"),
    ("backward: other ops", r"burn_autodiff::.*[Bb]ackward|burn_autodiff::runtime"),
    ("activations (SiLU, sigmoid, exp)", r"silu|sigmoid|activation|::exp"),
    ("copies (contiguous, permute, expand)", r"expand|contiguous|permute|swap_dims|copy_contiguous"),
    ("other tensor ops", r"burn_flex::"),
]
COMPILED = [(k, re.compile(p)) for k, p in RULES]


def samples(lines):
    frames = []
    for line in lines:
        if not line.strip():
            if frames:
                yield frames
            frames = []
        else:
            frames.append(line.strip())
    if frames:
        yield frames


def kind(frames):
    text = "\n".join(frames)
    for k, rx in COMPILED:
        if rx.search(text):
            return k
    if re.search(r"memset|memcpy|memmove|malloc|free|page_fault|clear_page|mmap", text):
        return "memory (allocation, zero-fill, copies)"
    return "other"


counts = Counter()
for s in samples(sys.stdin):
    k = kind(s)
    if k is not None:
        counts[k] += 1
total = sum(counts.values()) or 1
print(f"{total} samples")
for k, n in counts.most_common():
    print(f"  {100 * n / total:5.1f}%  {k}")
