//! `bench-conv`: GFLOP/s of every convolution of a model's training forward, forward and both
//! backwards, with our kernels and with burn-flex's. `scripts/bench_conv.sh` adds PyTorch's.
//! With `--inference`: the inference forward (bias and SiLU fused) as the product runs it, against
//! the same without the direct and Winograd convolutions (im2col or shifted GEMMs), the two taking turns. With `--bf16`: ours with bf16
//! products (`--amp bf16`) in place of burn-flex's.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use burn::backend::ops::ModuleOps;
use burn::backend::Flex;
use burn::tensor::{Device, Distribution, Tensor};
use clap::Args;

use crate::kernels::conv::{self, ConvGeom};
use crate::kernels::{self, bf16, Arithmetic, ConvSpec};
use crate::model;

#[derive(Args)]
pub struct BenchConvArgs {
    /// Built-in YAML name, YAML path, .pt or .safetensors.
    #[arg(long, default_value = "yolov8n.yaml")]
    pub model: String,
    /// Input size (rounded up to a multiple of 32).
    #[arg(long, default_value_t = 320, value_parser = crate::options::image_size)]
    pub imgsz: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Timed repetitions per convolution and pass (the median is kept), at least 1.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// One JSON object per convolution shape instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Time the inference forward instead: ours as the product runs it against ours without the
    /// direct and Winograd convolutions (im2col or shifted GEMMs), repetitions interleaved.
    #[arg(long)]
    pub inference: bool,
    /// Time ours with bf16 products (`train --amp bf16`'s convolutions; emulated, so about f32's
    /// cost, on a CPU without AVX512-BF16) in place of burn-flex's.
    #[arg(long, conflicts_with = "inference")]
    pub bf16: bool,
}

/// Median seconds of `reps` calls of `f` after one warm-up call.
fn median_s(reps: u32, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn flops(g: &ConvGeom) -> f64 {
    2.0 * (g.n * g.co * g.ho() * g.wo() * (g.ci / g.groups) * g.kh * g.kw) as f64
}

fn spec(g: &ConvGeom) -> ConvSpec {
    ConvSpec { stride: g.stride, pad: g.pad, dilation: g.dilation, groups: g.groups, arith: g.arith }
}

/// Seconds of (forward, input gradient, weight gradient) with our kernels.
fn time_ours(g: &ConvGeom, reps: u32) -> [f64; 3] {
    let x = vec![0.5f32; g.n * g.ci * g.h * g.w];
    let w = vec![0.1f32; g.weight_len()];
    let dy = vec![0.2f32; g.out_len()];
    [
        median_s(reps, || drop(conv::forward(g, &x, &w, None, false))),
        median_s(reps, || drop(conv::backward(g, &x, &w, &dy, true, false))),
        median_s(reps, || drop(conv::backward(g, &x, &w, &dy, false, true))),
    ]
}

/// Median seconds of the inference forward (bias + SiLU) as the product runs it and without the
/// direct convolution, the two interleaved so that a slow spell of the machine falls on both.
fn time_inference(g: &ConvGeom, reps: u32) -> [f64; 2] {
    let x = vec![0.5f32; g.n * g.ci * g.h * g.w];
    let w = vec![0.01f32; g.weight_len()];
    let b = vec![0.1f32; g.co];
    let mut t = [Vec::new(), Vec::new()];
    for rep in 0..=reps {
        for (i, f) in [conv::forward_inference, conv::forward_inference_gemm].into_iter().enumerate() {
            let s = Instant::now();
            drop(f(g, &x, &w, Some(&b), true));
            if rep > 0 {
                t[i].push(s.elapsed().as_secs_f64());
            }
        }
    }
    t.map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    })
}

/// Seconds of (forward, input gradient, weight gradient) with burn-flex's ops.
fn time_burn(g: &ConvGeom, reps: u32, device: &Device) -> [f64; 3] {
    let flex = |shape: [usize; 4]| {
        Tensor::<4>::random(shape, Distribution::Uniform(0.0, 1.0), device).try_into_primitive::<Flex>().expect("a flex tensor")
    };
    let (x, w, dy) = (flex([g.n, g.ci, g.h, g.w]), flex([g.co, g.ci / g.groups, g.kh, g.kw]), flex([g.n, g.co, g.ho(), g.wo()]));
    let o = spec(g).options();
    [
        median_s(reps, || drop(Flex::conv2d(x.clone(), w.clone(), None, o.clone()))),
        median_s(reps, || drop(Flex::conv2d_x_backward(x.clone(), w.clone(), dy.clone(), o.clone()))),
        median_s(reps, || drop(Flex::conv2d_weight_backward(x.clone(), w.clone(), dy.clone(), o.clone()))),
    ]
}

pub fn run(a: BenchConvArgs) -> Result<()> {
    let a = BenchConvArgs { imgsz: crate::options::stride_multiple(a.imgsz), ..a };
    let device = Device::flex();
    let m = model::load(&a.model, None, &device)?.model;
    let x = Tensor::<4>::zeros([a.batch as usize, 3, a.imgsz, a.imgsz], &device);
    let (_, geoms) = kernels::record_convs(|| m.forward(x));
    let mut shapes: BTreeMap<String, (ConvGeom, usize)> = BTreeMap::new();
    for g in geoms {
        let key = format!(
            "{}x{}x{}x{} k{}x{} s{} p{} g{} -> {}",
            g.n, g.ci, g.h, g.w, g.kh, g.kw, g.stride[0], g.pad[0], g.groups, g.co
        );
        shapes.entry(key).or_insert((g, 0)).1 += 1;
    }
    if a.inference {
        return report_inference(&a, &shapes);
    }
    let other = match (a.bf16, bf16::native()) {
        (false, _) => "burn-flex".to_string(),
        (true, true) => "ours with bf16 products".to_string(),
        (true, false) => "ours with bf16 products (emulated: this CPU has no AVX512-BF16)".to_string(),
    };
    if !a.json {
        println!("{} at {} batch {}: GFLOP/s, ours | {other} (forward, input grad, weight grad)", a.model, a.imgsz, a.batch);
    }
    let mut total = [[0.0f64; 3]; 2];
    for (key, (g, count)) in &shapes {
        let ours = time_ours(g, a.reps);
        let burn = if a.bf16 { time_ours(&ConvGeom { arith: Arithmetic::Bf16, ..*g }, a.reps) } else { time_burn(g, a.reps, &device) };
        for i in 0..3 {
            total[0][i] += ours[i] * *count as f64;
            total[1][i] += burn[i] * *count as f64;
        }
        let gf = |s: f64| flops(g) / s / 1e9;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"shape": key, "count": count, "n": g.n, "ci": g.ci, "h": g.h, "w": g.w, "co": g.co,
                    "k": g.kh, "stride": g.stride[0], "pad": g.pad[0], "groups": g.groups, "gflop": flops(g) / 1e9,
                    "ours_s": ours, if a.bf16 { "bf16_s" } else { "burn_s" }: burn})
            );
        } else {
            println!(
                "{key:<36} ×{count}  {:6.1} {:6.1} {:6.1} | {:6.1} {:6.1} {:6.1}",
                gf(ours[0]), gf(ours[1]), gf(ours[2]), gf(burn[0]), gf(burn[1]), gf(burn[2])
            );
        }
    }
    if !a.json {
        let ms = |t: [f64; 3]| format!("{:.0} + {:.0} + {:.0} ms", t[0] * 1e3, t[1] * 1e3, t[2] * 1e3);
        println!("all convolutions of one step: ours {}, {other} {}", ms(total[0]), ms(total[1]));
    }
    Ok(())
}

/// `--inference`: per shape and in all, ours against ours without the direct and Winograd convolutions.
fn report_inference(a: &BenchConvArgs, shapes: &BTreeMap<String, (ConvGeom, usize)>) -> Result<()> {
    if !a.json {
        println!("{} at {} batch {}: inference forward GFLOP/s, ours | without the direct and Winograd convolutions (ratio of times)", a.model, a.imgsz, a.batch);
    }
    let mut total = [0.0f64; 2];
    for (key, (g, count)) in shapes {
        let t = time_inference(g, a.reps);
        total.iter_mut().zip(t).for_each(|(s, t)| *s += t * *count as f64);
        let gf = |s: f64| flops(g) / s / 1e9;
        if a.json {
            println!("{}", serde_json::json!({"shape": key, "count": count, "gflop": flops(g) / 1e9, "ours_s": t[0], "gemm_s": t[1]}));
        } else {
            println!("{key:<36} ×{count}  {:6.1} | {:6.1}  ({:.2})", gf(t[0]), gf(t[1]), t[0] / t[1]);
        }
    }
    if !a.json {
        println!("all convolutions of one forward: ours {:.1} ms, without the direct and Winograd convolutions {:.1} ms ({:.2})", total[0] * 1e3, total[1] * 1e3, total[0] / total[1]);
    }
    Ok(())
}
