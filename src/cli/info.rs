use anyhow::Result;
use clap::Args;

use crate::model::walk::{Slot, Walk};
use crate::model::{self, flops::gflops};

#[derive(Args)]
pub struct InfoArgs {
    /// Built-in YAML name (yolov8n.yaml), YAML path, .pt or .safetensors.
    #[arg(long)]
    pub model: String,
    /// Image size for GFLOPs.
    #[arg(long, default_value_t = 640, value_parser = crate::options::image_size)]
    pub imgsz: usize,
    /// Number of classes (YAML builds only).
    #[arg(long, value_parser = crate::options::at_least_one)]
    pub nc: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let device = crate::default_device();
    let m = model::load(&a.model, a.nc, &device)?.model;
    let mut rows = Vec::new();
    let mut mm = m.clone();
    for (i, layer) in mm.layers.iter_mut().enumerate() {
        let mut n = 0usize;
        layer.walk("", &mut |_, s: Slot<'_>| {
            if s.is_param() {
                n += s.shape().iter().product::<usize>();
            }
        });
        let l = &m.spec.layers[i];
        let from = if l.from.len() == 1 { l.from[0].to_string() } else { format!("{:?}", l.from) };
        rows.push((i, from, l.repeats, l.module.clone(), l.args_text.clone(), n));
    }
    let params = m.param_count();
    let gf = gflops(&m, a.imgsz);
    if a.json {
        let layers: Vec<_> = rows
            .iter()
            .map(|(i, f, n, module, args, p)| {
                serde_json::json!({"index": i, "from": f, "repeats": n, "module": module, "args": args, "params": p})
            })
            .collect();
        let obj = serde_json::json!({
            "model": a.model, "params": params, "gflops": gf, "imgsz": a.imgsz,
            "nc": m.nc(), "scale": m.spec.scale, "layers": layers,
        });
        println!("{obj}");
    } else {
        println!("{:>4}  {:>14}  {:>3}  {:>10}  {:<12} {}", "", "from", "n", "params", "module", "arguments");
        for (i, f, n, module, args, p) in &rows {
            println!("{i:>4}  {f:>14}  {n:>3}  {p:>10}  {module:<12} [{args}]");
        }
        println!("{} summary: {} layers, {} parameters, {:.1} GFLOPs at {}", a.model, rows.len(), params, gf, a.imgsz);
    }
    Ok(())
}
