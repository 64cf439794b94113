"""Reference values for the response losses that ../shared/fixtures/distill_losses.safetensors has
no entry for: the binary KD of `--logit kl`, the localisation KL of `--logit ld`, and the dense
response of `--logit dense`, each written from its formula in PyTorch (independently of our Rust),
with the gradient with respect to the student's input.

Writes tests/data/distill_extra.safetensors (a few KB). Run from the repository root:
    "$(bash ../shared/tools/ref-env.sh)" scripts/distill_extra_reference.py
"""

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(0)
N, NC, A, R = 2, 3, 40, 16  # batch, classes, anchors, DFL bins
out = {}


def put(name, t):
    out[name] = t.detach().to(torch.float32).contiguous()


# --logit kl: T^2 * mean BCE(sigmoid(s/T), sigmoid(t/T)) over every element
s = torch.randn(N, NC, A) * 3
t = torch.randn(N, NC, A) * 3
put("kd.s", s)
put("kd.t", t)
for temp in (1.0, 2.5):
    x = s.clone().requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(x / temp, torch.sigmoid(t / temp)) * temp**2
    loss.backward()
    put(f"kd_binary.t{temp}", loss.reshape(1))
    put(f"kd_binary.t{temp}.grad", x.grad)

# --logit ld: per anchor and side KL(softmax(t/T) || softmax(s/T)) over the bins, sides averaged,
# anchors weighted: T^2 * sum_a w_a KL_a / max(sum w, 1e-9)
sb = torch.randn(N, 4 * R, A) * 2
tb = torch.randn(N, 4 * R, A) * 2
w = torch.rand(N, A)
put("ld.s", sb)
put("ld.t", tb)
put("ld.w", w)
for temp in (1.0, 2.0):
    x = sb.clone().requires_grad_(True)
    ls = F.log_softmax(x.reshape(N, 4, R, A) / temp, dim=2)
    lt = F.log_softmax(tb.reshape(N, 4, R, A) / temp, dim=2)
    kl = F.kl_div(ls, lt, reduction="none", log_target=True).sum(2).mean(1)  # [N, A]
    loss = (kl * w).sum() * temp**2 / w.sum().clamp_min(1e-9)
    loss.backward()
    put(f"ld.t{temp}", loss.reshape(1))
    put(f"ld.t{temp}.grad", x.grad)

# --logit dense: class term = T^2 * sum over anchors and classes of the binary KL from the
# teacher's probabilities to the student's, / max(sum of teacher confidences, 1); box term = the
# bins' KL per side (sides averaged) weighted by the teacher's confidence, same normalisation.
for temp in (1.0, 2.0):
    xs = s.clone().requires_grad_(True)
    xb = sb.clone().requires_grad_(True)
    conf = torch.sigmoid(t).amax(1, keepdim=True)  # [N, 1, A]
    norm = conf.sum().clamp_min(1.0)
    p = torch.sigmoid(t / temp)
    q = torch.sigmoid(xs / temp)
    kl = p * (torch.log(p) - torch.log(q)) + (1 - p) * (torch.log1p(-p) - torch.log1p(-q))
    cls = kl.sum() * temp**2 / norm
    ls = F.log_softmax(xb.reshape(N, 4, R, A) / temp, dim=2)
    lt = F.log_softmax(tb.reshape(N, 4, R, A) / temp, dim=2)
    side = F.kl_div(ls, lt, reduction="none", log_target=True).sum(2).mean(1, keepdim=True)  # [N, 1, A]
    box = (side * conf).sum() * temp**2 / norm
    (cls + box).backward()
    put(f"dense.t{temp}.cls", cls.reshape(1))
    put(f"dense.t{temp}.box", box.reshape(1))
    put(f"dense.t{temp}.grad_scores", xs.grad)
    put(f"dense.t{temp}.grad_boxes", xb.grad)

save_file(out, "tests/data/distill_extra.safetensors")
print(f"wrote {len(out)} tensors to tests/data/distill_extra.safetensors")
