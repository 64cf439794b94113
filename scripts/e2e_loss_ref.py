"""Dev script: Ultralytics' one-to-one loss terms (tal_topk 7, tal_topk2 1, as 8.4's
E2ELoss uses for the one2one branch) on the yolov8n loss fixture's head maps.
The printed items are the reference numbers of tests/loss_parity.rs
(`one_to_one_loss_items_match_ultralytics`).

    PY=$(../shared/tools/ref-env.sh | tail -n 1); $PY scripts/e2e_loss_ref.py ../shared/fixtures/yolov8n_loss.safetensors
"""
import sys
import torch
from safetensors.torch import load_file
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG
from ultralytics.utils.loss import v8DetectionLoss

fx = load_file(sys.argv[1])
m = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
m.args = DEFAULT_CFG
crit = v8DetectionLoss(m, tal_topk=7, tal_topk2=1)
b = fx["preds.boxes"].shape[0]
feats = [torch.zeros(b, 1, h, w) for h, w in [(40, 40), (20, 20), (10, 10)]]
preds = {"boxes": fx["preds.boxes"], "scores": fx["preds.scores"], "feats": feats}
batch = {"batch_idx": fx["batch_idx"].view(-1), "cls": fx["cls"].view(-1, 1), "bboxes": fx["bboxes"]}
total, items = crit.loss(preds, batch)
print("one2one loss items:", {k: float(v) for k, v in items.items()} if isinstance(items, dict) else [float(x) for x in items])
# sanity: the default assigner reproduces the fixture's own loss_items
_, items10 = v8DetectionLoss(m, tal_topk=10).loss(preds, batch)
print("one2many (topk 10):", {k: float(v) for k, v in items10.items()} if isinstance(items10, dict) else items10,
      "fixture:", fx["loss_items"].tolist())
